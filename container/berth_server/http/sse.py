"""Server-sent events: framing, an early comment, disconnect detection, and errors as a final event.

FINDINGS: headers only leave with the first body chunk, so an SSE comment goes first; a client
that disconnects is noticed by a watcher greenlet peeking the raw socket for EOF, so its
generation is aborted promptly instead of at the next token.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from flask import Response, request

from berth_server.errors import BerthError, GenerationFailed
from berth_server.http.errors import Family, family_for_request, stream_error_event

log = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
SSE_OPEN = ": berth\n\n"  # an SSE comment: every client ignores it, and it pushes the headers out
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any) -> str:
    """Frame one event: a dict/list is JSON-encoded, a str is sent as is."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n"


def _watch_disconnect(sock: socket.socket, on_disconnect: Callable[[], None]) -> None:
    """Block until the client closes its side, then call on_disconnect."""
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        data = b""
    if data == b"":
        on_disconnect()
    # Data (a pipelined request) means we cannot tell: stop watching.


def start_disconnect_watcher(environ: dict[str, Any], on_disconnect: Callable[[], None]) -> gevent.Greenlet | None:
    """Spawn the EOF watcher on gunicorn's socket; None when not under gunicorn (tests)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    return gevent.spawn(_watch_disconnect, sock, on_disconnect)


def sse_response(events: Iterable[str], *, on_close: Callable[[], None] | None = None,
                 family: Family | None = None, done: bool = False, status: int = 200) -> Response:
    """Stream already-framed SSE strings; errors become a final event; on_close runs in finally.

    Args:
        events: framed events (use sse_event); may raise BerthError mid-stream.
        on_close: cleanup (stream.close) — runs when the stream ends, fails or the client leaves.
        family: error body family; defaults to the current request's.
        done: append `data: [DONE]` after the events (OpenAI).
    """
    family = family or family_for_request()
    environ = request.environ

    def generate() -> Iterator[str]:
        watcher = start_disconnect_watcher(environ, on_close) if on_close is not None else None
        iterator = iter(events)
        try:
            yield SSE_OPEN
            yield from iterator
            if done:
                yield SSE_DONE
        except BerthError as error:
            log.warning("stream on %s failed: %s", environ.get("PATH_INFO"), error.message)
            yield sse_event(stream_error_event(error, family))
        except Exception as exc:
            log.exception("stream on %s failed", environ.get("PATH_INFO"))
            yield sse_event(stream_error_event(GenerationFailed(f"internal error: {type(exc).__name__}"), family))
        finally:
            if watcher is not None:
                watcher.kill(block=True)  # blocking: a dangling watcher breaks keep-alive (FINDINGS)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            if on_close is not None:
                on_close()

    return Response(generate(), status=status, mimetype="text/event-stream", headers=SSE_HEADERS)
