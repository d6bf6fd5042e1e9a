"""The frontend's door to model processes: one DEALER per model per worker, demultiplexed by request id.

Each gunicorn worker (after fork) lazily opens one zmq.green DEALER per model uid and runs one
greenlet that reads EventBatch frames and routes each event to the queue of its request
(FINDINGS: this beats a socket per request). Protocol services only see GenerationStream.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import msgspec
import zmq.green as zmq
from gevent.queue import Empty, Queue

from berth_server import ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.errors import (
    BerthError,
    GenerationFailed,
    IncompleteGeneration,
    NotFound,
    NotReady,
    from_failure,
)
from berth_server.models.launch import ModelDescription
from berth_server.settings import Settings

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


class Gateway:
    """Per-worker access to model processes and to model facts from the launcher."""

    def __init__(self, settings: Settings, control: Any, runtime_dir: Path | None = None, *,
                 accept_timeout_s: float = 120.0, event_timeout_s: float = 300.0,
                 send_timeout_s: float = 2.0, call_timeout_s: float = 120.0, status_ttl_s: float = 1.0,
                 liveness_check_s: float = 2.0) -> None:
        self.settings = settings
        self.control = control
        self.runtime_dir = runtime_dir or settings.runtime_dir or Path(".")
        self.accept_timeout_s = accept_timeout_s
        self.event_timeout_s = event_timeout_s
        self.send_timeout_s = send_timeout_s
        self.call_timeout_s = call_timeout_s
        self.status_ttl_s = status_ttl_s
        self.liveness_check_s = liveness_check_s
        self._pid = -1
        self._context: zmq.Context | None = None
        self._clients: dict[str, ModelClient] = {}
        self._status: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})

    # -- model processes -------------------------------------------------------------------
    def client(self, uid: str) -> ModelClient:
        """This worker's ModelClient for uid, created after fork on first use."""
        if self._pid != os.getpid():  # forked since the sockets were made: start afresh
            self._pid = os.getpid()
            self._context = zmq.Context()
            self._clients = {}
        client = self._clients.get(uid)
        if client is None:
            assert self._context is not None
            address = ipc.model_socket_address(self.runtime_dir, uid)
            client = ModelClient(uid, address, self._context, self.send_timeout_s)
            self._clients[uid] = client
        return client

    def generate(self, request: GenerateRequest) -> GenerationStream:
        """Start a generation on request.model (a uid); read .accepted, then iterate Deltas."""
        client = self.client(request.model)
        queue = client.register(request.request_id)
        try:
            client.send(ipc.Generate(request=request))
        except BaseException:
            client.unregister(request.request_id)
            raise
        pid = self._model_pid(request.model)
        return GenerationStream(client, request, queue, self.accept_timeout_s, self.event_timeout_s,
                                alive=lambda: self._still_serving(request.model, pid),
                                check_every_s=self.liveness_check_s)

    def _model_pid(self, uid: str) -> int | None:
        """The pid serving uid per the launcher (cached), to notice a restart mid-request."""
        try:
            status = self.statuses().get(uid) or {}
        except BerthError:
            return None
        return (status.get("description") or {}).get("pid")

    def _still_serving(self, uid: str, pid: int | None) -> bool:
        """False once the launcher reports uid not ready, or served by another process."""
        try:
            status = self.statuses().get(uid)
        except BerthError:
            return True  # the launcher is busy: we cannot tell, keep waiting
        if status is None or status.get("state") != "ready":
            return False
        return pid is None or (status.get("description") or {}).get("pid") == pid

    def _call(self, uid: str, message: Any, reply_type: type, timeout_s: float | None = None) -> Any:
        """One request/reply exchange with a model process (tokenize, stats, embed, rerank)."""
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        client = self.client(uid)
        queue = client.register(message.request_id)
        try:
            client.send(message)
            try:
                event = queue.get(timeout=timeout)
            except Empty:
                raise NotReady(f"model '{uid}' did not answer within {timeout:.0f} s") from None
        finally:
            client.unregister(message.request_id)
        if isinstance(event, Failure):
            raise from_failure(event.error_type, event.message, event.param)
        if not isinstance(event, reply_type):
            raise GenerationFailed(f"model '{uid}' answered {type(event).__name__}, expected {reply_type.__name__}")
        return event

    def tokenize(self, uid: str, text: str | None = None, messages: list[dict[str, Any]] | None = None,
                 add_special_tokens: bool = True) -> list[ipc.TokenSpan]:
        """Tokenize text, or render and tokenize chat messages."""
        message = ipc.Tokenize(request_id=new_request_id(), text=text, messages=messages,
                               add_special_tokens=add_special_tokens)
        return self._call(uid, message, ipc.Tokenized).tokens

    def embed(self, uid: str, texts: list[str]) -> ipc.Embedded:
        """Embed texts with an embedding model."""
        return self._call(uid, ipc.Embed(request_id=new_request_id(), texts=texts), ipc.Embedded)

    def rerank(self, uid: str, query: str, documents: list[str]) -> ipc.Reranked:
        """Score documents against a query with a rerank model."""
        return self._call(uid, ipc.Rerank(request_id=new_request_id(), query=query, documents=documents), ipc.Reranked)

    def stats(self, uid: str, timeout_s: float = 2.0) -> ipc.ModelStats:
        """The model process's counters (for /metrics; short timeout so a stuck model cannot hang a scrape)."""
        return self._call(uid, ipc.StatsQuery(request_id=new_request_id()), ipc.ModelStats, timeout_s)

    # -- facts from the launcher -----------------------------------------------------------
    def statuses(self, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """{uid: ModelStatus as dict} from the launcher, cached for status_ttl_s."""
        max_age = self.status_ttl_s if max_age_s is None else max_age_s
        fetched_at, statuses = self._status
        if time.monotonic() - fetched_at > max_age:
            statuses = self.control.call("status") or {}
            self._status = (time.monotonic(), statuses)
        return statuses

    def resolve_model(self, name: str | None) -> str:
        """The uid a request's model name means; None/""/"tgi"/the default id mean the default model."""
        default = self.settings.default_model_uid
        if name in (None, "", "tgi", default, self.settings.hf_model_id):
            return default
        if name in self.statuses():
            return name  # type: ignore[return-value]
        raise NotFound(f"model '{name}' not found")

    def describe(self, uid: str) -> ModelDescription:
        """What a ready model reports about itself (from the launcher's status)."""
        status = self.statuses().get(uid)
        if status is None:
            raise NotFound(f"model '{uid}' not found")
        description = status.get("description")
        if not description:
            raise NotReady(f"model '{uid}' is {status.get('state', 'not ready')}")
        return msgspec.convert(description, ModelDescription)

    def default_ready(self) -> bool:
        """True when the launcher reports the default model as ready (short cache)."""
        try:
            status = self.statuses(max_age_s=0.5).get(self.settings.default_model_uid)
        except BerthError:
            return False
        return status is not None and status.get("state") == "ready"

    def close(self) -> None:
        """Close every socket this worker opened (tests)."""
        for client in self._clients.values():
            client.close()
        self._clients = {}
