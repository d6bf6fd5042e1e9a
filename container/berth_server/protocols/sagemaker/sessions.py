"""SageMaker's stateful sessions on /invocations, as AWS's model-hosting container standard defines them.

With SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true (or BERTH_ENABLE_STATEFUL_SESSIONS):
- `{"requestType": "NEW_SESSION"}` opens a session: 200 with
  `X-Amzn-SageMaker-New-Session-Id: <id>; Expires=<YYYY-MM-DDTHH:MM:SSZ>` (the TTL, SAGEMAKER_SESSIONS_EXPIRATION,
  1200 s by default, runs from now);
- a request with `X-Amzn-SageMaker-Session-Id: <id>` runs in that session: every generation it starts carries
  the id to the model process and its engine, which keeps the session's prefix cached for the next turn;
- `{"requestType": "CLOSE"}` with the session header closes it: 200 with `X-Amzn-SageMaker-Closed-Session-Id`.
An unknown or expired id, a session header or request while sessions are off, a requestType other than
those two, or any other key beside it is a 400; a create or close the model could not carry out is a 424.
The sessions belong to the endpoint's (default) model, whose model process keeps them (model_process/sessions.py).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Literal

from flask import Response, g
from pydantic import BaseModel, ConfigDict

from berth_server.client.state import FrontendState
from berth_server.errors import BerthError, InvalidRequest
from berth_server.protocols.wire import parse

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION_HEADER = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_SESSION_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION = "NEW_SESSION"  # the SessionId SageMaker's runtime sends with a create
# SageMaker's pattern for session ids (InvokeEndpoint's SessionId), at most 256 characters.
SESSION_ID = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
MAX_SESSION_ID_CHARS = 256


class SessionError(InvalidRequest):
    """An unknown or expired session, or sessions used while they are off: a 400 on every wire (TGI's too)."""

    tgi_status = 400


class SessionFailed(BerthError):
    """The model could not open or close the session (SageMaker's 424, a failed dependency)."""

    status = 424
    error_type = "generation"
    openai_type = "server_error"


class SessionBody(BaseModel):
    """A session-management invocation: requestType and nothing else."""

    model_config = ConfigDict(extra="forbid")

    requestType: Literal["NEW_SESSION", "CLOSE"]  # SageMaker's spelling


def is_session_request(body: dict[str, Any]) -> bool:
    """Whether an invocation manages a session (its body names a requestType) rather than generating."""
    return "requestType" in body


def handle(state: FrontendState, body: dict[str, Any], header: str | None) -> Response:
    """Open or close a session; the reply SageMaker passes back (its headers become NewSessionId/ClosedSessionId)."""
    _require_enabled(state)
    request_type = parse(SessionBody, body).requestType
    uid = state.gateway.resolve_model(None)
    if request_type == "NEW_SESSION":  # a session header on a create is ignored, as the standard does
        reply = _call(state, uid, "open", None, "create")
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reply.expires_at))
        return Response(f"Session {reply.session_id} created", mimetype="text/plain",
                        headers={NEW_SESSION_HEADER: f"{reply.session_id}; Expires={expires}"})
    session_id = checked_id(header, required=True)
    reply = _call(state, uid, "close", session_id, "close")
    _require_open(reply.state, session_id, closed_ok=True)
    return Response(f"Session {session_id} closed", mimetype="text/plain",
                    headers={CLOSED_SESSION_HEADER: session_id})


def bind(state: FrontendState, header: str | None) -> FrontendState:
    """The state a request in a session runs with: its generations carry the session's id.

    Checks the session is open first (a 400 otherwise, before anything runs). The bound state is also
    kept in flask.g, so a view reached by route=... (which fetches its own state) runs in the session too.
    """
    if header is None or header.strip() in ("", NEW_SESSION):
        return state  # SageMaker sends NEW_SESSION only with a create; elsewhere it names no session
    _require_enabled(state)
    session_id = checked_id(header, required=True)
    reply = state.gateway.session(state.gateway.resolve_model(None), "check", session_id)
    _require_open(reply.state, session_id)
    bound = dataclasses.replace(state, gateway=SessionGateway(state.gateway, session_id))
    g.berth_state = bound
    return bound


def checked_id(header: str | None, *, required: bool) -> str:
    """The session id of a header; a 400 when it is missing (and required) or cannot be a session id."""
    session_id = (header or "").strip()
    if not session_id:
        if required:
            raise SessionError(f"closing a session needs its id in {SESSION_HEADER}", param=SESSION_HEADER)
        return session_id
    if len(session_id) > MAX_SESSION_ID_CHARS or not SESSION_ID.match(session_id):
        raise SessionError(f"session {session_id[:80]!r} is unknown", param=SESSION_HEADER)
    return session_id


class SessionGateway:
    """The gateway as one session's requests see it: every generation is started in the session."""

    def __init__(self, gateway: Any, session_id: str) -> None:
        self._gateway = gateway
        self.session_id = session_id

    def generate(self, request: Any) -> Any:
        """Start a generation in the session (the model process refuses it if the session closed meanwhile)."""
        request.session_id = self.session_id
        return self._gateway.generate(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def _require_enabled(state: FrontendState) -> None:
    if not state.settings.stateful_sessions:
        raise SessionError("stateful sessions are not enabled on this endpoint (set "
                           "SAGEMAKER_ENABLE_STATEFUL_SESSIONS=true)", param=SESSION_HEADER)


def _require_open(state_name: str, session_id: str, closed_ok: bool = False) -> None:
    if state_name == "open" or (closed_ok and state_name == "closed"):
        return
    if state_name == "disabled":
        raise SessionError("stateful sessions are not enabled on this endpoint's model", param=SESSION_HEADER)
    raise SessionError(f"session {session_id!r} is {state_name}", param=SESSION_HEADER)


def _call(state: FrontendState, uid: str, action: Literal["open", "close"], session_id: str | None,
          what: str) -> Any:
    """A create or close on the model; its failure is SageMaker's 424."""
    try:
        reply = state.gateway.session(uid, action, session_id)
    except BerthError as exc:
        raise SessionFailed(f"could not {what} the session: {exc.message}") from exc
    if reply.state == "disabled":
        _require_open(reply.state, session_id or "")
    return reply
