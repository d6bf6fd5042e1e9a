"""SageMaker's stateful sessions: the model process's registry and messages, and /invocations with a fake gateway."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from berth_server import ipc
from berth_server.canonical import Accepted, Failure, SamplingParams
from berth_server.engines.llamacpp_sessions import SessionSlots
from berth_server.errors import GenerationFailed
from berth_server.http.app import create_app
from berth_server.model_process.server import ModelServer
from berth_server.model_process.sessions import SessionRegistry
from berth_server.model_process.text_pipeline import TextPipeline
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeGateway
from tests.unit.test_model_process_server import WAIT_S, Client, FakeEngine, finished, gen, pipeline  # noqa: F401

NEW = {"requestType": "NEW_SESSION"}
CLOSE = {"requestType": "CLOSE"}
HEADER = "X-Amzn-SageMaker-Session-Id"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class SessionGateway(FakeGateway):
    """The fake gateway, with a real session registry behind Gateway.session (as the model process keeps it)."""

    def __init__(self, registry: SessionRegistry) -> None:
        super().__init__()
        self.registry = registry
        self.fail: bool = False

    def session(self, uid: str, action: ipc.SessionAction, session_id: str | None = None) -> ipc.SessionState:
        """Open, check or close, as ModelServer answers them."""
        if self.fail:
            raise GenerationFailed("the model process failed")
        if action == "open":
            sid, expires_at = self.registry.open()
            return ipc.SessionState(request_id="r", session_id=sid, state="open", expires_at=expires_at)
        state = self.registry.state(session_id or "")
        if state == "open" and action == "close":
            self.registry.close(session_id or "")
            state = "closed"
        return ipc.SessionState(request_id="r", session_id=session_id, state=state)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(clock: Clock, tmp_path: Path) -> SessionGateway:
    return SessionGateway(SessionRegistry(60, tmp_path / "sessions.json", clock))


def make_client(gateway: FakeGateway, tmp_path: Path, enabled: bool = True) -> FlaskClient:
    settings = Settings(model_uid="tiny", runtime_dir=tmp_path, stateful_sessions=enabled, session_ttl_s=60)
    return create_app(settings, gateway=gateway, control=object()).test_client()


def test_create_use_close_and_every_refusal(gateway: SessionGateway, clock: Clock, tmp_path: Path) -> None:
    client = make_client(gateway, tmp_path)
    created = client.post("/invocations", json=NEW, headers={HEADER: "NEW_SESSION"})
    assert created.status_code == 200
    header = created.headers["X-Amzn-SageMaker-New-Session-Id"]
    session, expires = re.fullmatch(r"([0-9a-f-]{36}); Expires=(\S+Z)", header).groups()  # type: ignore[union-attr]
    assert expires == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now + 60))
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert client.post("/invocations", json=chat, headers={HEADER: session}).status_code == 200
    assert gateway.requests[-1].session_id == session  # carried to the model process
    tgi = client.post("/invocations", json={"inputs": "hi"}, headers={HEADER: session})
    assert tgi.status_code == 200 and gateway.requests[-1].session_id == session
    routed = client.post("/invocations", json=chat, headers={HEADER: session, "X-Amzn-SageMaker-Custom-Attributes":
                                                              "route=/v1/chat/completions"})
    assert routed.status_code == 200 and gateway.requests[-1].session_id == session
    assert client.post("/invocations", json=chat).status_code == 200 and gateway.requests[-1].session_id is None

    for bad in ({"requestType": "OPEN"}, {"requestType": "CLOSE", "x": 1}, {"requestType": None}):
        reply = client.post("/invocations", json=bad, headers={HEADER: session})
        assert reply.status_code == 400 and reply.json["error"]["type"] == "invalid_request_error", bad
    assert client.post("/invocations", json=CLOSE).status_code == 400  # no session named
    unknown = client.post("/invocations", json={"inputs": "hi"}, headers={HEADER: "abc-123"})
    assert unknown.status_code == 400 and unknown.json["error_type"] == "validation"  # TGI's shape, a 400
    assert client.post("/invocations", json=chat, headers={HEADER: "-bad id"}).status_code == 400

    closed = client.post("/invocations", json=CLOSE, headers={HEADER: session})
    assert closed.status_code == 200 and closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session
    after = client.post("/invocations", json=chat, headers={HEADER: session})
    assert after.status_code == 400 and "unknown" in after.json["error"]["message"]

    expiring = client.post("/invocations", json=NEW).headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    clock.now += 61
    expired = client.post("/invocations", json=chat, headers={HEADER: expiring})
    assert expired.status_code == 400 and "expired" in expired.json["error"]["message"]
    assert client.post("/invocations", json=CLOSE, headers={HEADER: expiring}).status_code == 400

    gateway.fail = True
    assert client.post("/invocations", json=NEW).status_code == 424
    assert client.post("/invocations", json=CLOSE, headers={HEADER: session}).status_code == 424


def test_sessions_off_refuse_session_requests_and_headers(gateway: SessionGateway, tmp_path: Path) -> None:
    client = make_client(gateway, tmp_path, enabled=False)
    assert client.post("/invocations", json=NEW).status_code == 400
    reply = client.post("/invocations", json={"inputs": "hi"}, headers={HEADER: "abc"})
    assert reply.status_code == 400 and "not enabled" in reply.json["error"]
    # SageMaker's NEW_SESSION value outside a create names no session.
    assert client.post("/invocations", json={"inputs": "hi"}, headers={HEADER: "NEW_SESSION"}).status_code == 200


def test_the_registry_persists_and_expires(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "s.json"
    registry = SessionRegistry(10, path, clock)
    first, expires_at = registry.open()
    second, _ = registry.open()
    assert expires_at == clock.now + 10 and registry.state(first) == "open"
    registry.close(second)
    reborn = SessionRegistry(10, path, clock)  # a restarted model process
    assert reborn.state(first) == "open" and reborn.state(second) == "unknown"
    clock.now += 10
    assert reborn.state(first) == "expired" and reborn.sweep() == [first]
    assert reborn.state(first) == "expired" and len(reborn) == 0 and json.loads(path.read_text()) == {}


class SessionEngine(FakeEngine):
    """The fake engine, recording the sessions it is told to free and the session of each request."""

    def __init__(self, script: list[int]) -> None:
        super().__init__(script)
        self.freed: list[str] = []
        self.sessions: list[str | None] = []

    async def close_session(self, session_id: str) -> None:
        self.freed.append(session_id)

    def check(self, request: Any) -> None:
        self.sessions.append(request.session_id)


def test_model_process_opens_checks_closes_and_gates_generations(pipeline: TextPipeline,  # noqa: F811
                                                                  tmp_path: Path, clock: Clock) -> None:
    engine = SessionEngine(pipeline.encode(" ok", False))

    async def main() -> None:
        server = ModelServer(Settings(stateful_sessions=True), f"ipc://{tmp_path}/m.sock", engine=engine,
                             pipeline=pipeline, sessions=SessionRegistry(30, tmp_path / "s.json", clock))
        server.bind()
        stop = asyncio.Event()
        serving = asyncio.ensure_future(server.serve(stop))
        client = Client(zmq.asyncio.Context.instance(), server.address)
        try:
            await client.send(ipc.SessionRequest(request_id="o", action="open"))
            opened = await client.until(lambda e: e.request_id == "o")
            sid = opened.session_id
            assert opened.state == "open" and opened.expires_at == clock.now + 30
            await client.send(gen("g1", session_id=sid, sampling=SamplingParams(max_new_tokens=1)))
            await client.until(finished("g1"))
            assert isinstance(client.events("g1")[0], Accepted) and engine.sessions[-1] == sid
            assert server.stats("s").open_sessions == 1
            await client.send(gen("g2", session_id="nope"))
            refused = await client.until(lambda e: e.request_id == "g2")
            assert isinstance(refused, Failure) and refused.status == 400 and "unknown" in refused.message
            await client.send(ipc.SessionRequest(request_id="c", action="close", session_id=sid))
            assert (await client.until(lambda e: e.request_id == "c")).state == "closed"
            assert engine.freed == [sid]
            await client.send(ipc.SessionRequest(request_id="c2", action="check", session_id=sid))
            assert (await client.until(lambda e: e.request_id == "c2")).state == "unknown"
            await client.send(ipc.SessionRequest(request_id="o2", action="open"))
            expiring = (await client.until(lambda e: e.request_id == "o2")).session_id
            clock.now += 31
            await client.send(ipc.SessionRequest(request_id="c3", action="check", session_id=expiring))
            assert (await client.until(lambda e: e.request_id == "c3")).state == "expired"
            await asyncio.sleep(0)
            assert engine.freed == [sid, expiring]  # an expired session's engine state is freed too
        finally:
            stop.set()
            await asyncio.wait_for(serving, WAIT_S)
            server.close()
            client.socket.close(linger=0)

    asyncio.run(main())


def test_llamacpp_slots_follow_sessions_least_recently_used_first() -> None:
    slots = SessionSlots(2)
    assert (slots.slot_for("a"), slots.slot_for("b"), slots.slot_for("a")) == (0, 1, 0)
    assert slots.slot_for("c") == 1  # "b" was used least recently: it yields its slot
    assert slots.release("a") and not slots.release("b") and len(slots) == 1
    assert slots.slot_for("d") == 0


def test_settings_read_sagemakers_names_and_berths() -> None:
    assert Settings.from_env({}).stateful_sessions is False and Settings.from_env({}).session_ttl_s == 1200
    on = Settings.from_env({"SAGEMAKER_ENABLE_STATEFUL_SESSIONS": "true", "SAGEMAKER_SESSIONS_EXPIRATION": "30"})
    assert on.stateful_sessions and on.session_ttl_s == 30
    assert Settings.from_env({"BERTH_ENABLE_STATEFUL_SESSIONS": "1"}).stateful_sessions
    assert Settings.from_env(on.to_env()).stateful_sessions  # what a model process gets


# --- the bidirectional stream's connection, on a fake WebSocket -------------------------------------------

class FakeWebSocket:
    """simple_websocket's Server as Connection uses it: frames in from a queue, frames out into a list."""

    def __init__(self) -> None:
        import gevent.queue

        self.incoming: Any = gevent.queue.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def receive(self) -> Any:
        from simple_websocket import ConnectionClosed

        frame = self.incoming.get()
        if frame is None:
            raise ConnectionClosed()
        return frame

    def send(self, data: str) -> None:
        self.sent.append(json.loads(data))

    def close(self, reason: int, message: str) -> None:
        self.closed = (reason, message)


class HeldGateway(FakeGateway):
    """Generations whose second batch never comes (until the stream is closed)."""

    def generate(self, request: Any) -> Any:
        import gevent.event

        stream = super().generate(request)
        batches = stream.batches

        def held() -> Any:
            iterator = batches()
            yield next(iterator)
            gevent.event.Event().wait()

        stream.batches = held
        return stream


def _wait_for(condition: Any) -> None:
    import gevent

    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline
        gevent.sleep(0.01)


def test_websocket_requests_run_at_once_and_a_hang_up_closes_them(tmp_path: Path) -> None:
    import gevent
    from berth_server.http.bidi_stream import Connection

    gateway = HeldGateway()
    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=gateway, control=object())
    ws = FakeWebSocket()
    serving = gevent.spawn(Connection(app, ws, [("Accept", "application/json")]).serve)
    ws.incoming.put(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}]}))
    ws.incoming.put(json.dumps({"id": "b", "inputs": "hi"}))
    ws.incoming.put("[1, 2]")
    _wait_for(lambda: {f["id"] for f in ws.sent if "event" in f} == {"a", "b"} and len(ws.sent) >= 3)
    refused = next(f for f in ws.sent if f["id"] == 3)
    assert refused["done"] and refused["status"] == 422 and "JSON object" in refused["error"]["error"]
    assert all(not s.closed for s in gateway.streams) and len(gateway.streams) == 2  # both held, in flight
    ws.incoming.put(None)  # the client hangs up
    serving.join(WAIT_S)
    assert serving.dead and all(s.closed for s in gateway.streams)  # every generation was closed (aborted)


def test_websocket_refuses_binary_frames_with_1003(tmp_path: Path) -> None:
    import gevent
    from berth_server.http.bidi_stream import Connection

    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=FakeGateway(), control=object())
    ws = FakeWebSocket()
    ws.incoming.put(json.dumps({"id": 1, "inputs": "hi", "stream": False}))
    serving = gevent.spawn(Connection(app, ws, []).serve)
    _wait_for(lambda: any(f.get("done") for f in ws.sent))
    assert ws.sent[0]["body"][0]["generated_text"] and ws.sent[-1] == {"id": 1, "done": True, "status": 200}
    ws.incoming.put(b"\x00")
    serving.join(WAIT_S)
    assert ws.closed is not None and ws.closed[0] == 1003


def test_a_plain_http_request_to_the_websocket_is_told_to_upgrade(tmp_path: Path) -> None:
    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=FakeGateway(), control=object())
    reply = app.test_client().get("/invocations-bidirectional-stream")
    assert reply.status_code == 426 and reply.headers["Upgrade"] == "websocket" and "WebSocket" in reply.json["detail"]
