"""SageMaker routes: /ping readiness and /invocations dispatch by body shape, with a fake gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from berth_server.errors import InvalidRequest
from berth_server.http.app import create_app
from berth_server.protocols.sagemaker.schemas import shape_of
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeGateway
from tests.unit.test_tgi_fakes import tgi_gateway


@pytest.fixture
def gateway() -> FakeGateway:
    return tgi_gateway()


def make_client(gateway: FakeGateway, tmp_path: Path, **settings: Any) -> FlaskClient:
    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path, **settings), gateway=gateway, control=object())
    return app.test_client()


@pytest.fixture
def client(gateway: FakeGateway, tmp_path: Path) -> FlaskClient:
    return make_client(gateway, tmp_path)


def data_events(data: bytes) -> list[str]:
    return [line[len("data:"):].strip() for line in data.decode().splitlines() if line.startswith("data:")]


def test_shape_decides_and_messages_api_enabled_breaks_ties() -> None:
    assert shape_of({"inputs": "x"}, False) == "tgi"
    assert shape_of({"messages": []}, False) == "chat"
    assert shape_of({"prompt": "x"}, True) == "completion"
    assert shape_of({"inputs": "x", "messages": []}, False) == "tgi"
    assert shape_of({"inputs": "x", "messages": []}, True) == "chat"
    with pytest.raises(InvalidRequest, match="messages.*prompt.*inputs"):
        shape_of({"text": "x"}, False)


def test_ping_follows_default_model_readiness(client: FlaskClient, gateway: FakeGateway) -> None:
    assert client.get("/ping").status_code == 200
    gateway.ready = False
    reply = client.get("/ping")
    assert reply.status_code == 503 and reply.json["error_type"] == "healthcheck"


def test_inputs_body_gets_a_tgi_list_reply(client: FlaskClient, gateway: FakeGateway) -> None:
    reply = client.post("/invocations", json={"inputs": "hi", "parameters": {"max_new_tokens": 2, "details": True}},
                        headers={"X-Amzn-SageMaker-Inference-Id": "abc", "Accept": "application/json",
                                 "X-Amzn-SageMaker-Custom-Attributes": "trace=1"})
    assert reply.status_code == 200
    assert reply.headers["X-Amzn-SageMaker-Inference-Id"] == "abc"
    (item,) = reply.json
    assert item["generated_text"] == "Hello world"
    assert item["details"]["finish_reason"] == "length" and len(item["details"]["tokens"]) == 2
    assert gateway.requests[-1].prompt == "hi" and gateway.requests[-1].token_details


def test_inputs_batch_gets_one_reply_per_prompt(client: FlaskClient, gateway: FakeGateway) -> None:
    counted: list[tuple[str, int, int]] = []
    client.application.extensions["berth"].metrics.count_tokens = lambda *args: counted.append(args)
    reply = client.post("/invocations", json={"inputs": ["a", "bb", "ccc"], "parameters": {"max_new_tokens": 1}})
    assert reply.json == [{"generated_text": "Hello"}] * 3
    assert [r.prompt for r in gateway.requests] == ["a", "bb", "ccc"]
    assert all(stream.closed for stream in gateway.streams)
    assert [prompt for _, prompt, _ in counted] == [1, 2, 3]  # each input's own prompt tokens


def test_inputs_stream_gives_tgi_token_events(client: FlaskClient) -> None:
    reply = client.post("/invocations", json={"inputs": "hi", "stream": True, "parameters": {"max_new_tokens": 2}})
    assert reply.mimetype == "text/event-stream"
    events = [json.loads(e) for e in data_events(reply.data)]
    assert [e["token"]["text"] for e in events] == ["Hello", " world"]
    assert events[-1]["generated_text"] == "Hello world" and events[-1]["details"]["finish_reason"] == "length"


def test_messages_and_prompt_bodies_use_the_openai_service(client: FlaskClient, gateway: FakeGateway) -> None:
    chat = client.post("/invocations", json={"model": "my-endpoint", "max_tokens": 2,
                                             "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200, chat.json
    assert chat.json["object"] == "chat.completion"
    assert chat.json["choices"][0]["message"]["content"] == "Hello world"
    assert gateway.requests[-1].messages and gateway.requests[-1].model == "tiny"
    completion = client.post("/invocations", json={"prompt": "hi", "max_tokens": 1})
    assert completion.json["object"] == "text_completion" and completion.json["choices"][0]["text"] == "Hello"
    streamed = client.post("/invocations", json={"prompt": "hi", "max_tokens": 1, "stream": True})
    assert data_events(streamed.data)[-1] == "[DONE]"


def test_error_families_follow_the_shape(client: FlaskClient) -> None:
    unknown = client.post("/invocations", json={"text": "hi"})
    assert unknown.status_code == 422 and "inputs" in unknown.json["error"] and unknown.json["detail"]
    tgi = client.post("/invocations", json={"inputs": "hi", "parameters": {"temperature": -1}})
    assert tgi.status_code == 422 and tgi.json["error_type"] == "validation"
    chat = client.post("/invocations", json={"messages": [{"role": "nobody", "content": "x"}]})
    assert chat.status_code == 400 and chat.json["error"]["type"] == "invalid_request_error"
    assert client.post("/invocations", data="{oops", content_type="application/json").status_code == 422
    assert client.post("/invocations", json={"inputs": []}).status_code == 422
    assert client.post("/invocations", json={"inputs": ["a", "b"], "stream": True}).status_code == 422
    assert client.get("/ping").status_code == 200  # still serving


def test_messages_api_enabled_prefers_chat_for_ambiguous_bodies(gateway: FakeGateway, tmp_path: Path) -> None:
    client = make_client(gateway, tmp_path, messages_api_enabled=True)
    body = {"inputs": "ignored", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert client.post("/invocations", json=body).json["object"] == "chat.completion"
    assert client.post("/invocations", json={"inputs": "hi"}).json[0]["generated_text"].startswith("Hello")
