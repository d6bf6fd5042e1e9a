"""Per-worker plumbing to one model process: a DEALER with its demultiplexing greenlet, and one generation's stream.

Each gunicorn worker (after fork) opens one zmq.green DEALER per model uid and runs one greenlet
that reads EventBatch frames and routes each event to the queue of its request (FINDINGS: this
beats a socket per request). Protocol services only see GenerationStream.
"""

from __future__ import annotations

import contextlib
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
from zmq.utils.monitor import recv_monitor_message

from berth_server import ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.curve_keys import CurveClient, secure_client
from berth_server.errors import (
    BerthError,
    GenerationFailed,
    IncompleteGeneration,
    ModelTimeout,
    NotReady,
    failure_of,
    from_record,
)

log = logging.getLogger(__name__)
_CLOSED = object()  # put in a request queue to wake a reader after close()
_OVERFLOW = object()  # put in a request queue whose reader fell too far behind (backpressure)
# Events one request may have waiting in a worker before it is ended (BERTH_STREAM_BUFFER overrides).
DEFAULT_STREAM_BUFFER = 8192
# gevent can miss the edge on a zmq socket's FD; zmq.green then re-checks only after its
# `_gevent_bug_timeout` of 11.6 s. Seen here: a stream's reader waited exactly 11.6 s for frames the
# model process had sent on time. Re-checking this often bounds such a miss; an idle reader pays
# one non-blocking recv per interval.
MISSED_EVENT_RECHECK_S = 0.1


def new_request_id() -> str:
    """A unique id for a request crossing IPC."""
    return uuid.uuid4().hex


class ModelClient:
    """One worker's connection to one model process: a DEALER plus its demultiplexing greenlet."""

    def __init__(self, uid: str, address: str, context: zmq.Context, send_timeout_s: float,
                 buffer_events: int = DEFAULT_STREAM_BUFFER, curve: CurveClient | None = None) -> None:
        self.uid = uid
        self.address = address
        self.pid = os.getpid()
        self._send_timeout_s = send_timeout_s
        self._buffer_events = buffer_events
        self._queues: dict[str, Queue] = {}
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # IMMEDIATE: a send fails (instead of queueing forever) while no model process is connected.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:  # a replica on another node (TCP): CURVE keys, or it admits nothing
            secure_client(self._socket, curve)
        # The monitor tells at once when the model process's end of the connection goes away (a crash):
        # every request waiting on it fails then, instead of at the next liveness check.
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        for green_socket in (self._socket, self._monitor):
            green_socket._gevent_bug_timeout = MISSED_EVENT_RECHECK_S  # zmq.green's knob for this
        self._socket.connect(address)
        self._reader = gevent.spawn(self._demultiplex)
        self._watcher = gevent.spawn(self._watch_connection)

    @property
    def in_flight(self) -> int:
        """Requests of this worker waiting on this model process now (the replica router's load)."""
        return len(self._queues)

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
                if queue is None:
                    continue
                if queue.qsize() >= self._buffer_events:
                    self._overflow(event.request_id, queue)
                    continue
                queue.put(event)

    def _watch_connection(self) -> None:
        """Fail every pending request when the model process disconnects (it crashed or was killed)."""
        while True:
            try:
                recv_monitor_message(self._monitor)
            except zmq.ZMQError:
                return  # socket closed
            self.fail_pending(f"model '{self.uid}' went away (its process ended) during the request")

    def fail_pending(self, reason: str) -> None:
        """End every request still waiting on this model with an IncompleteGeneration naming `reason`."""
        for request_id, queue in list(self._queues.items()):
            queue.put(failure_of(request_id, IncompleteGeneration(reason)))
        self._queues = {}

    def _overflow(self, request_id: str, queue: Queue) -> None:
        """A reader fell `buffer_events` behind (a slow client): end its request rather than buffer without bound."""
        self._queues.pop(request_id, None)
        queue.put(_OVERFLOW)
        try:
            self.send(ipc.Abort(request_id=request_id))
        except BerthError:
            pass  # the model process is gone: nothing to abort

    def close(self, reason: str | None = None) -> None:
        """Stop the reader and close the socket; requests still waiting fail with `reason` (if given)."""
        self._reader.kill(block=True)
        self._watcher.kill(block=True)
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)
        if reason is not None:
            self.fail_pending(reason)
        self._queues = {}


class GenerationStream:
    """One generation: .accepted, then iterate Deltas; close() aborts unless it finished."""

    def __init__(self, client: ModelClient, request: GenerateRequest, queue: Queue,
                 accept_timeout_s: float, event_timeout_s: float,
                 alive: Callable[[], bool] | None = None, check_every_s: float = 2.0,
                 budget_s: float | None = None) -> None:
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
        # BERTH_REQUEST_TIMEOUT: the whole request's budget, however steadily tokens arrive.
        self._budget_s = budget_s
        self._deadline = None if budget_s is None else time.monotonic() + budget_s

    def _next_event(self, timeout_s: float, first: bool) -> Any:
        """Wait a bounded time for the next event, failing early if the model process went away."""
        deadline = time.monotonic() + timeout_s
        if self._deadline is not None and self._deadline < deadline:
            deadline, timeout_s = self._deadline, max(self._deadline - time.monotonic(), 0.0)
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
            uid = self._client.uid
            if self._deadline is not None and time.monotonic() >= self._deadline:
                raise ModelTimeout(f"model '{uid}' did not finish the request within its budget of "
                                   f"{self._budget_s:g} s (BERTH_REQUEST_TIMEOUT); it was aborted") from None
            if first:
                raise ModelTimeout(f"model '{uid}' did not accept the request within {timeout_s:g} s") from None
            raise ModelTimeout(f"model '{uid}' stopped sending tokens for {timeout_s:g} s") from None
        if event is _OVERFLOW:
            self.finished = True  # the demultiplexer already aborted it
            self.close()
            raise IncompleteGeneration(
                f"the client read too slowly: more than {self._client._buffer_events} events waited for it "
                "(BERTH_STREAM_BUFFER); the generation was ended")
        if isinstance(event, Failure):
            self.finished = True  # the model process already dropped it: no Abort needed
            self.close()
            raise from_record(event)
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
        """Deltas (of every choice, as they come) until each choice has had its finish_reason;
        stops quietly if close() was called meanwhile."""
        self.accepted  # noqa: B018 - raises on a rejected request
        unfinished = set(range(max(1, self.request.n)))
        while not self.finished and not self.closed:
            event = self._next_event(self._event_timeout_s, first=False)
            if event is _CLOSED:
                return
            if isinstance(event, Delta):
                if event.finish_reason is not None:
                    unfinished.discard(event.choice)
                    if not unfinished:
                        self.finished = True
                        self._client.unregister(self.request_id)
                yield event

    def batches(self) -> Iterator[list[Delta]]:
        """Like iteration, but each item holds every Delta already waiting: fewer, larger writes under load."""
        batch: list[Delta] = []
        for delta in self:
            batch.append(delta)
            if self._queue.empty() or self.finished:
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
