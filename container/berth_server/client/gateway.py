"""The frontend's door to model processes and to model facts from the launcher.

Gateway holds this worker's ModelClient per replica of each uid (created lazily after fork) and reads
the model table the launcher writes (model_table.py: one stat() per look, no RPC); protocol services
call generate/tokenize/embed/rerank/resolve_model on it. Each call goes to one ready replica, chosen by
client/replica_router.py (fewest in flight; a request's adapter or session prefers its last replica).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq.green as zmq
from gevent.queue import Empty

from berth_server import ipc
from berth_server.adapter_specs import AdapterSource
from berth_server.canonical import Failure, GenerateRequest
from berth_server.client.media_events import media_events
from berth_server.client.model_facts import ModelFacts
from berth_server.client.replica_router import ReplicaRouter, preference_key
from berth_server.client.streams import GenerationStream, ModelClient, new_request_id
from berth_server.curve_keys import CurveClient, read_client_keys
from berth_server.errors import BerthError, GenerationFailed, NotFound, NotReady, from_record
from berth_server.replicas import ready_replicas
from berth_server.settings import Settings

__all__ = ["Gateway", "GenerationStream", "ModelClient", "new_request_id"]
log = logging.getLogger(__name__)


# The replica whose model process keeps a model's SageMaker sessions (their registry, and the prefix cache
# their turns reuse): one home, so a session's open, turns and close always meet the same registry.
SESSION_REPLICA = 0


class Gateway(ModelFacts):
    """Per-worker access to model processes and to model facts from the launcher."""

    def __init__(self, settings: Settings, control: Any, runtime_dir: Path | None = None, *,
                 accept_timeout_s: float = 120.0, event_timeout_s: float = 300.0,
                 send_timeout_s: float = 2.0, call_timeout_s: float = 120.0, status_ttl_s: float = 1.0,
                 liveness_check_s: float = 0.5) -> None:
        super().__init__(settings, control, Path(runtime_dir or settings.runtime_dir or "."), status_ttl_s)
        self.accept_timeout_s = accept_timeout_s
        self.event_timeout_s = event_timeout_s
        self.send_timeout_s = send_timeout_s
        self.call_timeout_s = call_timeout_s
        self.liveness_check_s = liveness_check_s
        self._pid = -1
        self._context: zmq.Context | None = None
        self._clients: dict[tuple[str, int], ModelClient] = {}  # (uid, replica index) -> this worker's socket
        self.router = ReplicaRouter()
        self._adapters: dict[str, tuple[float, list[ipc.AdapterInfo]]] = {}

    # -- model processes -------------------------------------------------------------------
    def client(self, uid: str, replica: int | None = None) -> ModelClient:
        """This worker's ModelClient for a replica of uid (routed when not named), created after fork on first use."""
        if self._pid != os.getpid():  # forked since the sockets were made: start afresh
            self._pid = os.getpid()
            self._context = zmq.Context()
            self._clients = {}
        index = self.route(uid)[0] if replica is None else replica
        address = self._replica(uid, index).get("address") or ipc.model_socket_address(self.runtime_dir, uid, index)
        client = self._clients.get((uid, index))
        if client is not None and client.address != address:  # the replica was placed again elsewhere
            self._clients.pop((uid, index)).close(f"model '{uid}' replica {index} moved")
            client = None
        if client is None:
            assert self._context is not None
            client = ModelClient(uid, address, self._context, self.send_timeout_s, self.settings.stream_buffer_events,
                                 curve=self._curve(uid, index, address))
            self._clients[(uid, index)] = client
        return client

    def _curve(self, uid: str, index: int, address: str) -> CurveClient | None:
        """The CURVE keys for a replica on another node (tcp://); None for a local one (ipc://)."""
        if not address.startswith("tcp://"):
            return None
        server_key = self._replica(uid, index).get("server_key")
        keys = read_client_keys(self.runtime_dir)
        if not server_key or keys is None:
            raise NotReady(f"model '{uid}' replica {index} is remote, but its CURVE keys are missing")
        return CurveClient(server_public=server_key, public=keys[0], secret=keys[1])

    def route(self, uid: str, prefer: str | None = None) -> tuple[int, int | None]:
        """(replica index, its pid) for the next request to uid; replica 0 when none is ready (the send then fails)."""
        try:
            ready = ready_replicas(self.statuses().get(uid) or {})
        except BerthError:
            ready = []
        if not ready:
            return 0, None
        if prefer is not None and prefer.startswith("session:"):
            # A session's registry and cached prefix live in replica 0 (SESSION_REPLICA): the session goes there.
            ready = [r for r in ready if int(r["index"]) == SESSION_REPLICA] or ready
        chosen = self.router.pick(uid, ready, lambda i: self._in_flight(uid, i), prefer)
        pid = chosen.get("pid")
        return int(chosen["index"]), pid if isinstance(pid, int) else None

    def _in_flight(self, uid: str, index: int) -> int:
        client = self._clients.get((uid, index))
        return client.in_flight if client is not None and self._pid == os.getpid() else 0

    def generate(self, request: GenerateRequest) -> GenerationStream:
        """Start a generation on request.model (a uid) on its chosen replica; read .accepted, then iterate Deltas."""
        index, pid = self.route(request.model, preference_key(request))
        client = self.client(request.model, index)
        queue = client.register(request.request_id)
        try:
            client.send(ipc.Generate(request=request))
        except BaseException:
            client.unregister(request.request_id)
            raise
        return GenerationStream(client, request, queue, self.accept_timeout_s, self.event_timeout_s,
                                alive=lambda: self._still_serving(request.model, index, pid),
                                check_every_s=self.liveness_check_s, budget_s=self.settings.request_timeout_s)

    def _still_serving(self, uid: str, index: int, pid: int | None) -> bool:
        """False once the launcher reports that replica of uid not ready, or served by another process."""
        try:
            status = self.statuses().get(uid)
        except BerthError:
            return True  # the launcher is busy: we cannot tell, keep waiting
        replica = next((r for r in ready_replicas(status or {}) if r.get("index") == index), None)
        if replica is None:
            return False
        return pid is None or replica.get("pid") == pid

    def _call(self, uid: str, message: Any, reply_type: type, timeout_s: float | None = None,
              replica: int | None = None) -> Any:
        """One request/reply exchange with a model process (tokenize, stats, embed, rerank)."""
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        client = self.client(uid, replica)
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
            raise from_record(event)
        if not isinstance(event, reply_type):
            raise GenerationFailed(f"model '{uid}' answered {type(event).__name__}, expected {reply_type.__name__}")
        return event

    def tokenize(self, uid: str, text: str | None = None, messages: list[dict[str, Any]] | None = None,
                 add_special_tokens: bool = True, chat: GenerateRequest | None = None) -> list[ipc.TokenSpan]:
        """Tokenize text, render and tokenize chat messages, or render a whole chat request as its generation would."""
        message = ipc.Tokenize(request_id=new_request_id(), text=text, messages=messages,
                               add_special_tokens=add_special_tokens, chat=chat)
        return self._call(uid, message, ipc.Tokenized).tokens

    def embed(self, uid: str, texts: list[str], dimensions: int | None = None) -> ipc.Embedded:
        """Embed texts with an embedding model (truncated to `dimensions` and re-normalised when given)."""
        message = ipc.Embed(request_id=new_request_id(), texts=texts, dimensions=dimensions)
        return self._call(uid, message, ipc.Embedded)

    def rerank(self, uid: str, query: str, documents: list[str]) -> ipc.Reranked:
        """Score documents against a query with a rerank model."""
        return self._call(uid, ipc.Rerank(request_id=new_request_id(), query=query, documents=documents), ipc.Reranked)

    def media(self, uid: str, message: ipc.MediaMessage, last: tuple[type, ...]) -> Iterator[Any]:
        """Send an audio or image request; yield its events up to the one of a `last` type (a Failure raises).

        A caller takes the first event before it starts a reply (protocols/media.py `primed`), so a refusal
        is a 4xx, never a broken stream. Closing the iterator early aborts the request. Each event may take
        up to BERTH_REQUEST_TIMEOUT, else as long as a silent token stream may (an image takes a while).
        """
        client = self.client(uid)
        queue = client.register(message.request_id)
        try:
            client.send(message)
        except BaseException:
            client.unregister(message.request_id)
            raise
        timeout_s = self.settings.request_timeout_s or self.event_timeout_s
        return media_events(client, queue, message.request_id, last, timeout_s, uid)

    def stats(self, uid: str, timeout_s: float = 2.0, replica: int | None = None) -> ipc.ModelStats:
        """A model process's counters (for /metrics; short timeout so a stuck model cannot hang a scrape)."""
        return self._call(uid, ipc.StatsQuery(request_id=new_request_id()), ipc.ModelStats, timeout_s, replica)

    def session(self, uid: str, action: ipc.SessionAction, session_id: str | None = None) -> ipc.SessionState:
        """Open, check or close a stateful session on a model (its model process keeps the registry)."""
        message = ipc.SessionRequest(request_id=new_request_id(), action=action, session_id=session_id)
        return self._call(uid, message, ipc.SessionState, 30.0, SESSION_REPLICA)

    # -- LoRA adapters ----------------------------------------------------------------------
    def add_adapter(self, uid: str, adapter: AdapterSource) -> list[ipc.AdapterInfo]:
        """Register an adapter on a model, on every ready replica (its source may need a download: the long timeout)."""
        self._adapters.pop(uid, None)
        return self._on_every_replica(uid, lambda: ipc.AdapterAdd(request_id=new_request_id(), adapter=adapter))

    def remove_adapter(self, uid: str, name: str) -> list[ipc.AdapterInfo]:
        """Forget an adapter on a model, on every ready replica."""
        self._adapters.pop(uid, None)
        return self._on_every_replica(uid, lambda: ipc.AdapterRemove(request_id=new_request_id(), name=name))

    def _on_every_replica(self, uid: str, message: Any) -> list[ipc.AdapterInfo]:
        """Send an adapter change to each ready replica (a replica that restarts re-applies the stored ones)."""
        adapters: list[ipc.AdapterInfo] = []
        indices: list[int | None] = list(self.replica_indices(uid)) or [None]
        for index in indices:
            adapters = self._call(uid, message(), ipc.Adapters, replica=index).adapters
        return adapters

    def adapters(self, uid: str, max_age_s: float | None = None) -> list[ipc.AdapterInfo]:
        """A model's adapters, cached for status_ttl_s (another worker's change shows within that)."""
        max_age = self.status_ttl_s if max_age_s is None else max_age_s
        fetched_at, known = self._adapters.get(uid, (0.0, []))
        if time.monotonic() - fetched_at > max_age:
            known = self._call(uid, ipc.AdapterQuery(request_id=new_request_id()), ipc.Adapters, 10.0).adapters
            self._adapters[uid] = (time.monotonic(), known)
        return known

    def resolve_target(self, name: str | None) -> tuple[str, str | None]:
        """(uid, adapter) for a request's model name: a model, or an adapter of the default model."""
        try:
            return self.resolve_model(name), None
        except NotFound:
            default = self.settings.default_model_uid
            if name and any(a.name == name for a in self._adapters_or_none(default)):
                return default, name
            raise NotFound(f"model or adapter '{name}' not found", param="model") from None

    def _adapters_or_none(self, uid: str) -> list[ipc.AdapterInfo]:
        try:
            return self.adapters(uid)
        except BerthError:
            return []

    def _models_changed(self, statuses: dict[str, dict[str, Any]]) -> None:
        """Close this worker's sockets to models that are gone (terminated); their requests fail at once."""
        if self._pid != os.getpid():
            return
        for uid, index in [key for key in self._clients if key[0] not in statuses]:
            self._clients.pop((uid, index)).close(f"model '{uid}' was terminated")
            self.router.forget(uid)

    def close(self) -> None:
        """Close every socket this worker opened (tests)."""
        for client in self._clients.values():
            client.close()
        self._clients = {}

