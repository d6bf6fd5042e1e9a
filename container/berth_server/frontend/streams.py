"""Per-worker plumbing to one model process: a DEALER with its demultiplexing greenlet, and one generation's stream.

Each gunicorn worker (after fork) opens one zmq.green DEALER per model uid and runs one greenlet
that reads EventBatch frames and routes each event to the queue of its request (FINDINGS: this
beats a socket per request). Protocol services only see GenerationStream.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import msgspec
import zmq.green as zmq
from gevent.queue import Empty, Queue

from berth_server import ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.errors import BerthError, GenerationFailed, IncompleteGeneration, NotReady, from_failure

log = logging.getLogger(__name__)
_CLOSED = object()  # put in a request queue to wake a reader after close()


def new_request_id() -> str:
    """A unique id for a request crossing IPC."""
    return uuid.uuid4().hex


class ModelClient:
    """One worker's connection to one model process: a DEALER plus its demultiplexing greenlet."""

    def __init__(self, uid: str, address: str, context: zmq.Context, send_timeout_s: float) -> None:
        self.uid = uid
        self.pid = os.getpid()
        self._send_timeout_s = send_timeout_s
        self._queues: dict[str, Queue] = {}
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # IMMEDIATE: a send fails (instead of queueing forever) while no model process is connected.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.connect(address)
        self._reader = gevent.spawn(self._demultiplex)

    def register(self, request_id: str) -> Queue:
        """Create the queue that will receive events for request_id."""
        queue: Queue = Queue()
        self._queues[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        """Forget a request; late events for it are dropped."""
        self._queues.pop(request_id, None)

    def wake(self, request_id: str) -> None:
        """Unblock a reader waiting on request_id (used by close from another greenlet)."""
        queue = self._queues.get(request_id)
        if queue is not None:
            queue.put(_CLOSED)

    def send(self, message: msgspec.Struct) -> None:
        """Send one message; NotReady when the model process is not there to take it."""
        frame = ipc.encode(message)
        deadline = time.monotonic() + self._send_timeout_s
        while True:
            try:
                self._socket.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() >= deadline:
                    raise NotReady(f"model '{self.uid}' is not running or not accepting requests") from None
                # The ipc connection is established asynchronously; wait for it briefly.
                self._socket.poll(50, zmq.POLLOUT)

    def _demultiplex(self) -> None:
        """Route every event of every EventBatch to its request's queue."""
        while True:
            try:
                frame = self._socket.recv()
                batch = ipc.decode_event_batch(frame)
            except zmq.ZMQError:
                return  # socket closed
            except msgspec.DecodeError:
                log.warning("model '%s' sent an undecodable frame", self.uid)
                continue
            for event in batch.events:
                queue = self._queues.get(event.request_id)
                if queue is not None:
                    queue.put(event)

    def close(self) -> None:
        """Stop the reader and close the socket (tests and shutdown)."""
        self._reader.kill(block=True)
        self._socket.close(0)


class GenerationStream:
    """One generation: .accepted, then iterate Deltas; close() aborts unless it finished."""

    def __init__(self, client: ModelClient, request: GenerateRequest, queue: Queue,
                 accept_timeout_s: float, event_timeout_s: float,
                 alive: Callable[[], bool] | None = None, check_every_s: float = 2.0) -> None:
        self.request = request
        self.request_id = request.request_id
        self._client = client
        self._queue = queue
        self._accept_timeout_s = accept_timeout_s
        self._event_timeout_s = event_timeout_s
        self._accepted: Accepted | None = None
        self._alive = alive
        self._check_every_s = check_every_s
        self.finished = False
        self.closed = False

    def _next_event(self, timeout_s: float, first: bool) -> Any:
        """Wait a bounded time for the next event, failing early if the model process went away."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                event = self._queue.get(timeout=min(self._check_every_s, max(deadline - time.monotonic(), 0.0)))
                break
            except Empty:
                if self._alive is not None and not self._alive():
                    self.close()
                    raise IncompleteGeneration(
                        f"model '{self._client.uid}' went away (crashed or restarted) during the request") from None
                if time.monotonic() < deadline:
                    continue
            self.close()
            if first:
                raise NotReady(f"model '{self._client.uid}' did not answer within {timeout_s:.0f} s") from None
            raise IncompleteGeneration(
                f"model '{self._client.uid}' stopped sending tokens for {timeout_s:.0f} s") from None
        if isinstance(event, Failure):
            self.finished = True  # the model process already dropped it: no Abort needed
            self.close()
            raise from_failure(event.error_type, event.message, event.param)
        return event

    @property
    def accepted(self) -> Accepted:
        """The Accepted reply (blocks for the first event; raises the typed error on Failure)."""
        if self._accepted is None:
            if self.closed:
                raise IncompleteGeneration("the request was closed before the model accepted it")
            event = self._next_event(self._accept_timeout_s, first=True)
            if event is _CLOSED:
                raise IncompleteGeneration("the request was closed before the model accepted it")
            if not isinstance(event, Accepted):
                self.close()
                raise GenerationFailed(f"model '{self._client.uid}' answered {type(event).__name__} before Accepted")
            self._accepted = event
        return self._accepted

    def __iter__(self) -> Iterator[Delta]:
        """Deltas until one has finish_reason; stops quietly if close() was called meanwhile."""
        self.accepted  # noqa: B018 - raises on a rejected request
        while not self.finished and not self.closed:
            event = self._next_event(self._event_timeout_s, first=False)
            if event is _CLOSED:
                return
            if isinstance(event, Delta):
                if event.finish_reason is not None:
                    self.finished = True
                    self._client.unregister(self.request_id)
                yield event

    def batches(self) -> Iterator[list[Delta]]:
        """Like iteration, but each item holds every Delta already waiting: fewer, larger writes under load."""
        batch: list[Delta] = []
        for delta in self:
            batch.append(delta)
            if self._queue.empty() or delta.finish_reason is not None:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Abort the generation unless it finished; idempotent and safe from another greenlet."""
        if self.closed:
            return
        self.closed = True
        if not self.finished:
            try:
                self._client.send(ipc.Abort(request_id=self.request_id))
            except BerthError:
                pass  # the model process is gone: nothing to abort
        self._client.wake(self.request_id)
        self._client.unregister(self.request_id)
