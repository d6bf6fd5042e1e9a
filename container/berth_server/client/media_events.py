"""An audio or image request's events from its model process, up to its last one; an early close aborts it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gevent.queue import Empty

from berth_server import ipc
from berth_server.canonical import Failure
from berth_server.client.streams import ModelClient
from berth_server.errors import BerthError, GenerationFailed, ModelTimeout, from_record


def media_events(client: ModelClient, queue: Any, request_id: str, last: tuple[type, ...], timeout_s: float,
                 uid: str) -> Iterator[Any]:
    """Events from `queue` (registered for request_id on client) until one of a `last` type; a Failure raises,
    silence past timeout_s is a ModelTimeout, and leaving early sends the model process an Abort."""
    finished = False
    try:
        while True:
            try:
                event = queue.get(timeout=timeout_s)
            except Empty:
                raise ModelTimeout(f"model '{uid}' did not answer within {timeout_s:.0f} s") from None
            if isinstance(event, Failure):
                finished = True
                raise from_record(event)
            if not hasattr(event, "request_id"):  # the connection closed (a sentinel in the queue)
                raise GenerationFailed(f"model '{uid}' went away during the request")
            yield event
            if isinstance(event, last):
                finished = True
                return
    finally:
        client.unregister(request_id)
        if not finished:
            with contextlib.suppress(BerthError):
                client.send(ipc.Abort(request_id=request_id))
