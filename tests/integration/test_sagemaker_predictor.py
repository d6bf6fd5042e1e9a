"""SageMaker contract against the real server with the SDK v2 Predictor over LocalSession (no Docker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

TIMEOUT_S = 60


def make_predictor(port: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real sagemaker v2 Predictor whose LocalSession posts to 127.0.0.1:port/invocations."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.local import LocalSession, local_session
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import JSONSerializer

    # LocalSession asks Docker where the container is; there is no Docker here, the server is local.
    monkeypatch.setattr(local_session, "get_docker_host", lambda: "127.0.0.1")
    session = LocalSession()
    # The runtime client reads its port from the local-mode config (default 8080).
    session.config = {"local": {"local_code": True, "serving_port": port}}
    return Predictor("berth-local", sagemaker_session=session, serializer=JSONSerializer(),
                     deserializer=JSONDeserializer())


def close_connections(predictor: Any) -> None:
    """Drop the runtime client's keep-alive connections: gunicorn waits for open ones when it stops."""
    predictor.sagemaker_session.sagemaker_runtime_client.http.clear()


@pytest.fixture
def predictor(berth_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    predictor = make_predictor(berth_server.port, monkeypatch)
    yield predictor
    close_connections(predictor)


def test_ping(berth_server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(berth_server.url("/ping"), timeout=TIMEOUT_S).status_code == 200


def test_predict_messages_is_a_chat_completion(predictor: Any) -> None:
    reply = predictor.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                              custom_attributes="trace=1", inference_id="inf-1")
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert 1 <= reply["usage"]["completion_tokens"] <= 4


def test_predict_inputs_is_a_tgi_list(predictor: Any) -> None:
    reply = predictor.predict({"inputs": "Hello", "parameters": {"max_new_tokens": 3, "details": True}})
    assert isinstance(reply, list) and len(reply) == 1
    assert isinstance(reply[0]["generated_text"], str)
    assert 1 <= reply[0]["details"]["generated_tokens"] <= 3
    batch = predictor.predict({"inputs": ["Hello", "World"], "parameters": {"max_new_tokens": 2}})
    assert len(batch) == 2 and all("generated_text" in item for item in batch)


def test_predict_prompt_is_a_completion(predictor: Any) -> None:
    reply = predictor.predict({"prompt": "Hello", "max_tokens": 2})
    assert reply["object"] == "text_completion"


def test_bad_bodies_are_4xx_json_and_the_server_keeps_serving(berth_server, predictor: Any) -> None:  # type: ignore[no-untyped-def]
    error = predictor.predict({"text": "no known shape"})
    assert "error" in error and "detail" in error
    for body in ({"text": "x"}, {"inputs": "x", "parameters": {"temperature": 0}}, {"inputs": 5}):
        reply = httpx.post(berth_server.url("/invocations"), json=body, timeout=TIMEOUT_S)
        assert reply.status_code == 422 and reply.json()["error_type"] == "validation"
    reply = httpx.post(berth_server.url("/invocations"), json={"messages": "not a list"}, timeout=TIMEOUT_S)
    assert reply.status_code == 400 and reply.json()["error"]["message"]
    reply = httpx.post(berth_server.url("/invocations"), content=b"{nope",
                       headers={"Content-Type": "application/json"}, timeout=TIMEOUT_S)
    assert 400 <= reply.status_code < 500
    assert predictor.predict({"inputs": "Hello", "parameters": {"max_new_tokens": 1}})[0]["generated_text"] is not None


def test_inputs_stream_is_tgi_token_events(berth_server) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 3}}
    with httpx.stream("POST", berth_server.url("/invocations"), json=body, timeout=TIMEOUT_S) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line.startswith("data:")]
    assert lines and '"details"' in lines[-1] and "[DONE]" not in lines[-1]


def test_messages_api_enabled_still_dispatches_by_shape(start_server, tiny_model,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        request: pytest.FixtureRequest) -> None:
    server = start_server(tiny_model, env={"MESSAGES_API_ENABLED": "true", "BERTH_MODEL_UID": "tiny"})
    predictor = make_predictor(server.port, monkeypatch)
    request.addfinalizer(lambda: close_connections(predictor))  # runs before start_server stops it
    chat = predictor.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert chat["object"] == "chat.completion"
    tgi = predictor.predict({"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert isinstance(tgi, list) and "generated_text" in tgi[0]
    both = predictor.predict({"inputs": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert both["object"] == "chat.completion"  # MESSAGES_API_ENABLED: chat wins the tie
