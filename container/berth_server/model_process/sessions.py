"""SageMaker's stateful sessions, kept by the model process that serves them (so a frontend worker restart loses none).

A session is an id and the time it expires (its TTL runs from its creation, as in AWS's model-hosting
container standard; using it does not extend it). The registry is written to a small JSON file under
the runtime dir on every open and close, so a restarted model process still knows its open sessions
(their cached prefix is gone with the old process; their next turn simply prefills in full).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from berth_server import ipc
from berth_server.atomic_file import write_atomically
from berth_server.engines.base import Engine

log = logging.getLogger(__name__)

# Expired ids remembered (so a late turn hears "expired" rather than "unknown"); both are a 400.
REMEMBER_EXPIRED = 1024


class SessionRegistry:
    """Open sessions: id -> expiry (Unix seconds), persisted to `path` when one is given."""

    def __init__(self, ttl_s: float, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.path = path
        self._clock = clock
        self._open: dict[str, float] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        if path is not None and path.is_file():
            self._open = _read(path)

    @classmethod
    def for_model(cls, ttl_s: float, runtime_dir: Path, uid_digest: str) -> SessionRegistry:
        """The registry of one model, kept under the runtime dir (named like the model's socket)."""
        return cls(ttl_s, runtime_dir / f"sessions-{uid_digest}.json")

    def open(self) -> tuple[str, float]:
        """A new session's id and expiry; OSError when it cannot be recorded (nothing is then open)."""
        session_id = str(uuid.uuid4())  # matches SageMaker's pattern for session ids
        expires_at = self._clock() + self.ttl_s
        self._open[session_id] = expires_at
        try:
            self._save()
        except OSError:
            del self._open[session_id]
            raise
        return session_id, expires_at

    def state(self, session_id: str) -> str:
        """"open", "expired" or "unknown"."""
        expires_at = self._open.get(session_id)
        if expires_at is None:
            return "expired" if session_id in self._expired else "unknown"
        if self._clock() >= expires_at:
            return "expired"
        return "open"

    def expires_at(self, session_id: str) -> float:
        """When an open session expires (0.0 when it is not open)."""
        return self._open.get(session_id, 0.0)

    def close(self, session_id: str) -> None:
        """Forget a session (closed by its client); OSError when the record cannot be rewritten."""
        if self._open.pop(session_id, None) is not None:
            self._save()

    def sweep(self) -> list[str]:
        """Forget every expired session; their ids (their engine state is to be freed)."""
        now = self._clock()
        gone = [sid for sid, expires_at in self._open.items() if now >= expires_at]
        for session_id in gone:
            del self._open[session_id]
            self._expired[session_id] = None
        while len(self._expired) > REMEMBER_EXPIRED:
            self._expired.popitem(last=False)
        if gone:
            try:
                self._save()
            except OSError as exc:  # the expired ones come back after a restart, and expire again
                log.warning("cannot rewrite the session registry %s: %s", self.path, exc)
        return gone

    def __len__(self) -> int:
        return len(self._open)

    def _save(self) -> None:
        if self.path is not None:
            write_atomically(self.path, json.dumps(self._open).encode())


def _read(path: Path) -> dict[str, float]:
    """The sessions a previous model process recorded; none when the file is unreadable."""
    try:
        data = json.loads(path.read_text())
        return {str(sid): float(expires_at) for sid, expires_at in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        log.warning("ignoring an unreadable session registry %s: %s", path, exc)
        return {}


def refusal(registry: SessionRegistry | None, engine: Engine | None, session_id: str | None) -> str | None:
    """Why a request cannot run in this session (None when it has none, or it is open)."""
    if session_id is None:
        return None
    if registry is None:
        return "stateful sessions are not enabled on this model (SAGEMAKER_ENABLE_STATEFUL_SESSIONS)"
    sweep(registry, engine)
    state = registry.state(session_id)
    return None if state == "open" else f"session {session_id!r} is {state}"


def sweep(registry: SessionRegistry | None, engine: Engine | None) -> None:
    """Forget expired sessions and free what the engine kept for them (in the background)."""
    if registry is None or engine is None:
        return
    for session_id in registry.sweep():
        asyncio.ensure_future(engine.close_session(session_id))


async def answer(registry: SessionRegistry | None, engine: Engine | None,
                 message: ipc.SessionRequest) -> ipc.SessionState:
    """Open, check or close a stateful session."""
    rid = message.request_id
    if registry is None or engine is None:
        return ipc.SessionState(request_id=rid, session_id=message.session_id, state="disabled")
    sweep(registry, engine)
    if message.action == "open":
        session_id, expires_at = registry.open()
        return ipc.SessionState(request_id=rid, session_id=session_id, state="open", expires_at=expires_at)
    session_id = message.session_id or ""
    state = registry.state(session_id)
    if state != "open" or message.action == "check":
        return ipc.SessionState(request_id=rid, session_id=session_id, state=state,  # type: ignore[arg-type]
                                expires_at=registry.expires_at(session_id))
    await engine.close_session(session_id)
    registry.close(session_id)
    return ipc.SessionState(request_id=rid, session_id=session_id, state="closed")
