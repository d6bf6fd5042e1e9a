"""The frontend app with a fake gateway: error bodies by family, limits, auth, metrics, no heavy imports."""

from __future__ import annotations

import json

import pytest
from berth_server.errors import (
    Conflict,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    NotReady,
    Overloaded,
    from_record,
)
from berth_server.http.app import create_app
from berth_server.settings import Settings
from flask import Flask

from tests.unit.fakes.gateway import FakeControl, FakeGateway


def make_app(tmp_path, gateway: FakeGateway | None = None, **settings: object) -> Flask:
    """An app on fakes with the runtime dir under tmp_path."""
    return create_app(Settings(runtime_dir=tmp_path, **settings), gateway=gateway or FakeGateway(),  # type: ignore[arg-type]
                      control=FakeControl())


def test_unknown_route_is_json_404_by_family(tmp_path) -> None:
    client = make_app(tmp_path).test_client()
    openai = client.get("/v1/nothing")
    assert openai.status_code == 404
    assert openai.json["error"]["type"] == "not_found_error" and openai.json["detail"]
    tgi = client.get("/nothing")
    assert tgi.status_code == 404 and tgi.json["error_type"] == "not_found" and tgi.json["detail"]
    xinference = client.get("/v1/model_registrations/LLM/x/y/z")
    assert xinference.status_code == 404 and set(xinference.json) == {"detail", "error"}


def test_method_not_allowed_is_405(tmp_path) -> None:
    response = make_app(tmp_path).test_client().post("/metrics")
    assert response.status_code == 405 and response.json["error"]


def test_each_wire_writes_errors_in_its_own_shape() -> None:
    from berth_server.protocols.openai.errors import OPENAI_ERRORS
    from berth_server.protocols.tgi.errors import TGI_ERRORS
    from berth_server.protocols.xinference.errors import XINFERENCE_ERRORS

    error = InvalidRequest("bad temperature", param="temperature")
    assert OPENAI_ERRORS.status(error) == 400 and TGI_ERRORS.status(error) == 422
    assert OPENAI_ERRORS.body(error, 400) == {
        "error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature",
                  "code": 400},
        "detail": "bad temperature"}
    assert TGI_ERRORS.body(error, 422) == {"error": "bad temperature", "error_type": "validation",
                                           "detail": "bad temperature"}
    assert XINFERENCE_ERRORS.body(error, 400) == {"detail": "bad temperature", "error": "bad temperature"}


def test_one_error_record_crosses_processes_and_comes_back_typed() -> None:
    from berth_server.canonical import ErrorRecord
    from berth_server.errors import (
        ClientDisconnected,
        IncompleteGeneration,
        InputTooLong,
        InsufficientStorage,
        ModelTimeout,
        Overloaded,
        failure_of,
        record_of,
    )

    for error in (NotFound("x"), Conflict("x"), NotReady("x"), InvalidRequest("x", param="p"), GenerationFailed("x"),
                  Overloaded("x"), ModelTimeout("x"), InsufficientStorage("x"), IncompleteGeneration("x"),
                  ClientDisconnected("x")):
        for record in (record_of(error), failure_of("r1", error)):
            again = from_record(record)
            assert (type(again), again.message, again.param) == (type(error), "x", error.param)
    assert type(from_record(record_of(InputTooLong("x")))) is InvalidRequest  # same status, type and body
    # A record that names only its type (a model's load failure, a hand-made Failure) still comes back typed.
    assert isinstance(from_record(ErrorRecord(message="x", error_type="overloaded")), Overloaded)
    assert isinstance(from_record(ErrorRecord(message="x", error_type="validation")), InvalidRequest)
    assert isinstance(from_record(ErrorRecord(message="x", error_type="unheard-of")), GenerationFailed)


def test_overloaded_carries_retry_after(tmp_path) -> None:
    client = make_app(tmp_path, FakeGateway(failure=Overloaded("busy", retry_after_s=3))).test_client()
    response = client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"


def test_server_error_says_do_not_retry_and_hides_the_trace(tmp_path) -> None:
    class Exploding(FakeGateway):
        def resolve_model(self, name: str | None) -> str:
            raise RuntimeError("secret internals")

    client = make_app(tmp_path, Exploding()).test_client()
    response = client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"
    assert "secret" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)
    assert response.json["error"]["message"]


def test_body_over_the_limit_is_413(tmp_path) -> None:
    client = make_app(tmp_path, max_body_bytes=1000).test_client()
    response = client.post("/v1/completions", data=json.dumps({"prompt": "x" * 2000}),
                           content_type="application/json")
    assert response.status_code == 413 and response.json["detail"]


def test_malformed_json_is_400_on_v1(tmp_path) -> None:
    client = make_app(tmp_path).test_client()
    response = client.post("/v1/chat/completions", data="{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_api_key_required_when_set(tmp_path, headers: dict[str, str]) -> None:
    client = make_app(tmp_path, api_key="sekret").test_client()
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 401 and response.json["error"]["type"] == "authentication_error"


def test_api_key_accepted_and_open_paths_free(tmp_path) -> None:
    client = make_app(tmp_path, api_key="sekret").test_client()
    assert client.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert client.get("/v1/models", headers={"X-Api-Key": "sekret"}).status_code == 200
    assert client.get("/ping").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert make_app(tmp_path, api_key="sekret", metrics_public=True).test_client().get("/metrics").status_code == 200


def test_metrics_counts_requests_and_model_gauges(tmp_path) -> None:
    client = make_app(tmp_path).test_client()
    client.post("/v1/completions", json={"prompt": "hi"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'berth_http_requests_total{method="POST",route="/v1/completions",status="200"} 1.0' in text
    assert 'berth_generated_tokens_total{model="default"} 3.0' in text
    assert 'berth_model_queue_depth{model="default",replica="0"} 3.0' in text
    assert 'berth_model_running_requests{model="default",replica="0"} 2.0' in text
    assert 'berth_model_prefix_cache_queries{model="default",replica="0"} 120.0' in text
    assert 'berth_model_prefix_cache_hits{model="default",replica="0"} 96.0' in text


def test_two_apps_do_not_share_state(tmp_path) -> None:
    first, second = make_app(tmp_path), make_app(tmp_path)
    assert first.extensions["berth"] is not second.extensions["berth"]
