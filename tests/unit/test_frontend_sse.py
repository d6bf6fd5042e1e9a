"""SSE helpers: framing, the disconnect watcher, and cleanup when a stream ends or fails."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import gevent.event
from berth_server.errors import GenerationFailed
from berth_server.http.sse import (
    SSE_DONE,
    named_sse_event,
    ndjson_line,
    sse_event,
    sse_response,
    start_disconnect_watcher,
)
from berth_server.protocols.error_shape import ErrorShape
from berth_server.protocols.tgi.errors import TGI_ERRORS
from flask import Flask
from gevent import socket


def test_sse_event_framing() -> None:
    assert sse_event({"a": 1}) == 'data: {"a":1}\n\n'
    assert sse_event("[DONE]") == "data: [DONE]\n\n"
    assert named_sse_event({"type": "ping"}) == 'event: ping\ndata: {"type":"ping"}\n\n'
    assert ndjson_line({"done": True}) == '{"done":true}\n'


def test_watcher_fires_when_the_client_hangs_up() -> None:
    server_side, client_side = socket.socketpair()
    fired = gevent.event.Event()
    watcher = start_disconnect_watcher({"gunicorn.socket": server_side}, fired.set)
    assert watcher is not None and not fired.wait(0.05)
    client_side.close()
    assert fired.wait(2)
    watcher.kill(block=True)
    server_side.close()


def test_no_watcher_outside_gunicorn() -> None:
    assert start_disconnect_watcher({}, lambda: None) is None


def test_stream_error_becomes_final_event_and_cleanup_runs() -> None:
    closed: list[bool] = []

    def events() -> Iterator[str]:
        yield sse_event({"token": 1})
        raise GenerationFailed("boom")

    app = Flask(__name__)
    with app.test_request_context("/generate_stream"):
        response = sse_response(events(), on_close=lambda: closed.append(True), shape=TGI_ERRORS, done=True)
        body = "".join(response.response)  # type: ignore[arg-type]
    assert body.endswith('data: {"error":"boom","error_type":"generation"}\n\n')
    assert SSE_DONE not in body and closed == [True]


def test_an_ndjson_stream_has_no_sse_opener_and_ends_with_its_wires_error_line() -> None:
    def events() -> Iterator[str]:
        yield ndjson_line({"response": "a"})
        raise GenerationFailed("boom")

    shape = ErrorShape("plain", lambda e, s: {"error": e.message}, lambda e, s: {"error": e.message})
    app = Flask(__name__)
    with app.test_request_context("/api/generate"):
        response = sse_response(events(), shape=shape, framing="ndjson")
        body = "".join(response.response)  # type: ignore[arg-type]
    assert response.mimetype == "application/x-ndjson"
    assert body == '{"response":"a"}\n{"error":"boom"}\n'
