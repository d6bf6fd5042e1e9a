"""The model process's ROUTER: frontend messages in, one EventBatch frame per peer per loop turn out.

Each Generate runs as its own asyncio task (prepare -> Accepted -> Deltas). Events are queued per
peer identity and flushed once per event-loop iteration, so a worker gets everything pending in
one frame (FINDINGS: batching halves the frontend's cost). Sends never block: a peer that is gone
(ROUTER_MANDATORY -> EHOSTUNREACH) has its events dropped and its requests aborted.
MAX_CONCURRENT_REQUESTS is enforced here, the only place that sees every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import zmq
import zmq.asyncio

from berth_server import ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.engines.base import Engine
from berth_server.errors import BerthError, failure_of
from berth_server.model_process import sessions as stateful_sessions
from berth_server.model_process.adapter_store import AdapterStore
from berth_server.model_process.generation import Counters, run_generation
from berth_server.model_process.sessions import SessionRegistry
from berth_server.model_process.text_pipeline import TextPipeline
from berth_server.settings import Settings

log = logging.getLogger(__name__)


class EncoderService(Protocol):
    """What an embedding/rerank model process serves (built by encoder_service.create_encoder_service)."""

    async def embed(self, message: ipc.Embed) -> ipc.Embedded:
        """Embed texts."""

    async def rerank(self, message: ipc.Rerank) -> ipc.Reranked:
        """Score documents against a query."""


class MediaService(Protocol):
    """What an audio or image model process serves (model_process/media_service.py)."""

    async def serve(self, message: ipc.MediaMessage, emit: Any) -> None:
        """Answer one media request, emitting its events."""


class ModelServer:
    """Serves one model's engine (or encoder service) on a zmq.asyncio ROUTER."""

    def __init__(self, settings: Settings, address: str, *, engine: Engine | None = None,
                 pipeline: TextPipeline | None = None, encoder: EncoderService | None = None,
                 adapter_store: AdapterStore | None = None, sessions: SessionRegistry | None = None,
                 media: MediaService | None = None):
        self.settings = settings
        self.sessions = sessions  # None: stateful sessions are off
        self.adapter_store = adapter_store
        self.address = address
        self.engine = engine
        self.pipeline = pipeline
        self.encoder = encoder
        self.media = media
        self.counters = Counters()
        self.accepting = True
        self._context = zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._outbox: dict[bytes, list[Any]] = {}
        self._flush_scheduled = False
        self._requests: dict[tuple[bytes, str], asyncio.Task[None]] = {}
        self._generations: set[tuple[bytes, str]] = set()
        # A remote replica (model_process/remote.py) makes its ROUTER a CURVE server before bind.
        self.secure: Callable[[Any, Any], Any] | None = None
        self._authenticator: Any = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the ROUTER (before pushing 'ready')."""
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        socket.setsockopt(zmq.LINGER, 500)
        if self.secure is not None:
            self._authenticator = self.secure(socket, self._context)
        socket.bind(self.address)
        if self.address.endswith(":*"):  # a TCP port of the system's choosing: report the one bound
            self.address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = socket

    async def serve(self, stop: asyncio.Event) -> None:
        """Receive and dispatch until `stop` is set."""
        assert self._socket is not None, "bind() first"
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                receive = asyncio.ensure_future(self._socket.recv_multipart())
                done, _ = await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                frames = receive.result()
                if len(frames) == 2:
                    self._dispatch(frames[0], frames[1])
        finally:
            stopping.cancel()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting; let in-flight requests finish for up to timeout_s, then abort the rest."""
        self.accepting = False
        tasks = list(self._requests.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._flush()

    def close(self) -> None:
        """Close the socket (pending frames get the socket's short linger)."""
        self._flush()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    # --- dispatch ----------------------------------------------------------------------------------

    def _dispatch(self, peer: bytes, frame: bytes) -> None:
        try:
            message = ipc.decode_frontend_message(frame)
        except msgspec.DecodeError as exc:
            log.warning("dropping a malformed frame from a frontend: %s", exc)
            return
        if isinstance(message, ipc.Generate):
            self._start_generate(peer, message.request)
        elif isinstance(message, ipc.Abort):
            task = self._requests.get((peer, message.request_id))
            if task is not None:
                task.cancel()
        elif isinstance(message, ipc.StatsQuery):
            self.emit(peer, self.stats(message.request_id))
        elif isinstance(message, (ipc.Transcribe, ipc.Speak, ipc.MakeImages)):
            self._spawn(peer, message.request_id, self._serve_media(peer, message))
        else:
            self._spawn(peer, message.request_id, self._answer(peer, message))

    def _spawn(self, peer: bytes, request_id: str, coro: Any, generation: bool = False) -> None:
        task = asyncio.ensure_future(coro)
        key = (peer, request_id)
        self._requests[key] = task
        if generation:
            self._generations.add(key)
        task.add_done_callback(lambda _t: self._forget(key))

    def _forget(self, key: tuple[bytes, str]) -> None:
        self._requests.pop(key, None)
        self._generations.discard(key)

    def _start_generate(self, peer: bytes, request: GenerateRequest) -> None:
        rid = request.request_id
        if self.engine is None or self.pipeline is None:
            self.emit(peer, Failure(request_id=rid, message="this model does not generate text (it is an"
                                    " embedding or rerank model)", error_type="validation"))
            return
        if (peer, rid) in self._requests:
            self.emit(peer, Failure(request_id=rid, message=f"request id {rid!r} is already running",
                                    error_type="validation", param="request_id"))
            return
        refused = stateful_sessions.refusal(self.sessions, self.engine, request.session_id)
        if refused is not None:
            self.emit(peer, Failure(request_id=rid, message=refused, error_type="validation", status=400,
                                    param="session_id"))
            return
        if not self.accepting:
            self.emit(peer, Failure(request_id=rid, message="the model is shutting down",
                                    error_type="overloaded"))
            return
        if self.generating() >= self.settings.max_concurrent_requests:
            self.emit(peer, Failure(request_id=rid, message=f"too many concurrent requests (limit"
                                    f" {self.settings.max_concurrent_requests}); retry later",
                                    error_type="overloaded"))
            return
        self._spawn(peer, rid, run_generation(self, peer, request), generation=True)

    def generating(self) -> int:
        """Requests in flight (admitted and not finished)."""
        return len(self._generations)

    async def _answer(self, peer: bytes, message: Any) -> None:
        """Tokenize / Embed / Rerank: one reply or a Failure."""
        try:
            self.emit(peer, await self._reply_to(message))
        except BerthError as exc:
            self.emit(peer, failure_of(message.request_id, exc))
        except Exception as exc:
            log.exception("request %s failed", message.request_id)
            self.emit(peer, Failure(request_id=message.request_id, message=f"internal error: {exc}"))

    async def _serve_media(self, peer: bytes, message: ipc.MediaMessage) -> None:
        """Transcribe / Speak / MakeImages: the media service's events, or a Failure."""
        try:
            if self.media is None:
                raise _not_supported("audio or image requests (it is not an audio or image model)")
            await self.media.serve(message, lambda event: self.emit(peer, event))
        except BerthError as exc:
            self.emit(peer, failure_of(message.request_id, exc))
        except Exception as exc:
            log.exception("request %s failed", message.request_id)
            self.emit(peer, Failure(request_id=message.request_id, message=f"internal error: {exc}"))

    async def _reply_to(self, message: Any) -> Any:
        if isinstance(message, ipc.SessionRequest):
            return await stateful_sessions.answer(self.sessions, self.engine, message)
        if isinstance(message, (ipc.AdapterAdd, ipc.AdapterRemove, ipc.AdapterQuery)):
            from berth_server.model_process.adapters import handle_adapter_message

            return await handle_adapter_message(self.engine, self.settings, self.adapter_store, message)
        if isinstance(message, ipc.Tokenize):
            if self.pipeline is None:
                raise _not_supported("tokenize")
            return ipc.Tokenized(message.request_id, await self.pipeline.tokenize_async(message))
        if self.encoder is None:
            raise _not_supported("embeddings" if isinstance(message, ipc.Embed) else "rerank")
        if isinstance(message, ipc.Embed):
            return await self.encoder.embed(message)
        return await self.encoder.rerank(message)

    def stats(self, request_id: str) -> ipc.ModelStats:
        """Current counters."""
        running, waiting = self.engine.counts() if self.engine is not None else (0, 0)
        prefix = self.engine.prefix_counts() if self.engine is not None else None
        c = self.counters
        return ipc.ModelStats(request_id=request_id, running=running, waiting=waiting,
                              requests_total=c.requests_total, generated_tokens_total=c.generated_tokens_total,
                              prompt_tokens_total=c.prompt_tokens_total, aborted_total=c.aborted_total,
                              finished_total=c.finished_total,
                              open_sessions=len(self.sessions) if self.sessions is not None else 0,
                              pinned_sessions=self.engine.pinned_sessions() if self.engine is not None else 0,
                              prefix_cache_queries_total=prefix[0] if prefix else None,
                              prefix_cache_hits_total=prefix[1] if prefix else None)

    # --- sending -----------------------------------------------------------------------------------

    def emit(self, peer: bytes, event: Accepted | Delta | Failure | Any) -> None:
        """Queue an event for a peer; all events queued in this loop turn go out as one frame."""
        self._outbox.setdefault(peer, []).append(event)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._socket is None:
            self._outbox.clear()
            return
        outbox, self._outbox = self._outbox, {}
        retry = False
        for peer, events in outbox.items():
            # With NOBLOCK, zmq.asyncio resolves the send at once (and keeps its own read-event
            # bookkeeping right, which a separate sync handle on the socket would not).
            sent = self._socket.send_multipart([peer, ipc.encode(ipc.EventBatch(events=events))],
                                               flags=zmq.NOBLOCK)
            try:
                sent.result()  # type: ignore[attr-defined]  # a Future, already resolved
            except zmq.Again:  # the peer's queue is full: keep the events, in order, and try again soon
                self._outbox[peer] = events + self._outbox.get(peer, [])
                retry = True
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log.warning("frontend peer %r is gone; dropping %d events and aborting its requests",
                            peer, len(events))
                for (owner, _rid), task in list(self._requests.items()):
                    if owner == peer:
                        task.cancel()
        if retry and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(0.001, self._flush)


def _not_supported(what: str) -> BerthError:
    from berth_server.errors import InvalidRequest

    return InvalidRequest(f"this model does not support {what}")
