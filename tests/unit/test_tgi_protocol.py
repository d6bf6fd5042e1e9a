"""TGI protocol: parameter validation, conversion to the canonical request, replies and token events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from berth_server.errors import InvalidRequest, Overloaded
from berth_server.http.app import create_app
from berth_server.protocols.tgi.schemas import DEFAULT_MAX_NEW_TOKENS, GenerateBody, parse
from berth_server.settings import Settings
from flask import Flask
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeGateway
from tests.unit.test_tgi_fakes import tgi_gateway

# Every parameter the text-generation 0.7.0 client sends, nulls included.
CLIENT_PARAMETERS: dict[str, Any] = {
    "do_sample": False, "max_new_tokens": 3, "repetition_penalty": None, "frequency_penalty": None,
    "return_full_text": False, "stop": [], "seed": None, "temperature": None, "top_k": None, "top_p": None,
    "truncate": None, "typical_p": None, "best_of": None, "watermark": False, "details": True,
    "decoder_input_details": False, "top_n_tokens": None, "grammar": None,
}


@pytest.fixture
def gateway() -> FakeGateway:
    return tgi_gateway()


@pytest.fixture
def app(gateway: FakeGateway, tmp_path: Path) -> Flask:
    return create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=gateway, control=object())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def body(**parameters: Any) -> dict[str, Any]:
    return {"inputs": "hi", "parameters": {**CLIENT_PARAMETERS, **parameters}}


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a stream's data: lines (comments skipped)."""
    lines = data.decode().splitlines()
    return [json.loads(line[len("data:"):]) for line in lines if line.startswith("data:")]


@pytest.mark.parametrize(("name", "value"), [
    ("temperature", 0.0), ("top_k", 0), ("top_p", 1.0), ("top_p", 0.0), ("typical_p", 1.0),
    ("repetition_penalty", 0.0), ("truncate", 0), ("seed", -1), ("max_new_tokens", 0),
    ("best_of", 2), ("watermark", True), ("grammar", {"type": "xml", "value": "x"}), ("grammar", {"type": "regex"}),
    ("frequency_penalty", 3.0), ("stop", ["a", "b", "c", "d", "e"]), ("top_n_tokens", 0),
])
def test_invalid_parameters_are_422_validation(client: FlaskClient, name: str, value: Any) -> None:
    reply = client.post("/generate", json=body(**{name: value}))
    assert reply.status_code == 422, reply.json
    assert reply.json["error_type"] == "validation"
    assert name in reply.json["error"] and reply.json["detail"]


def test_malformed_bodies_are_422(client: FlaskClient) -> None:
    assert client.post("/generate", json={"parameters": {}}).status_code == 422
    assert client.post("/generate", json={"inputs": ""}).status_code == 422
    assert client.post("/generate", data="not json", content_type="application/json").status_code == 422
    assert client.post("/generate", json={"inputs": "x", "parameters": {"top_k": "many"}}).status_code == 422


def test_conversion_greedy_by_default_and_sampling_with_a_seed() -> None:
    greedy = parse(GenerateBody, body()).to_canonical("r", "tiny")
    assert greedy.sampling.greedy and greedy.sampling.seed is None and greedy.token_details
    assert greedy.prompt == "hi" and greedy.sampling.max_new_tokens == 3
    default = parse(GenerateBody, {"inputs": "hi"}).to_canonical("r", "tiny")
    assert default.sampling.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    sampled = parse(GenerateBody, body(temperature=0.7, top_p=0.9, stop=["x"], truncate=5)).to_canonical("r", "t")
    assert not sampled.sampling.greedy and sampled.sampling.seed is not None
    assert sampled.sampling.temperature == 0.7 and sampled.sampling.top_p == 0.9
    assert sampled.sampling.stop == ("x",) and sampled.truncate == 5
    seeded = parse(GenerateBody, body(do_sample=True, seed=42, top_n_tokens=2, decoder_input_details=True))
    request = seeded.to_canonical("r", "t")
    assert request.sampling.seed == 42 and request.sampling.logprobs == 2 and request.sampling.prompt_logprobs


def test_compat_route_returns_a_list_with_details(client: FlaskClient) -> None:
    reply = client.post("/", json=body(decoder_input_details=True))
    assert reply.status_code == 200
    (item,) = reply.json
    assert item["generated_text"] == "Hello world again"
    details = item["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 3
    assert details["seed"] is None and details["best_of_sequences"] is None
    assert [t["text"] for t in details["tokens"]] == ["Hello", " world", " again"]
    assert details["tokens"][0] == {"id": 10, "text": "Hello", "logprob": -0.25, "special": False}
    assert details["prefill"] == [{"id": 1, "text": "<s>", "logprob": None}, {"id": 7, "text": "hi", "logprob": -0.5}]


def test_generate_object_top_tokens_full_text_and_finish_reasons(client: FlaskClient, gateway: FakeGateway) -> None:
    reply = client.post("/generate", json=body(top_n_tokens=2, return_full_text=True, max_new_tokens=9))
    assert reply.json["generated_text"] == "hiHello world again and more"
    assert reply.json["details"]["finish_reason"] == "eos_token"
    assert len(reply.json["details"]["top_tokens"]) == 5 and len(reply.json["details"]["top_tokens"][0]) == 2
    assert reply.json["details"]["prefill"] == []
    stopped = client.post("/generate", json=body(stop=["again"], max_new_tokens=9)).json
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    assert stopped["generated_text"] == "Hello world again"  # TGI keeps the stop sequence
    plain = client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 1}}).json
    assert plain == {"generated_text": "Hello"}
    assert all(stream.closed for stream in gateway.streams)


def test_generate_stream_token_events_last_has_details_and_no_done(client: FlaskClient) -> None:
    reply = client.post("/generate_stream", json=body(top_n_tokens=1, seed=7, do_sample=True))
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    assert b"[DONE]" not in reply.data
    events = sse_events(reply.data)
    assert [e["index"] for e in events] == [1, 2, 3]
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[0]["token"] == {"id": 10, "text": "Hello", "logprob": -0.25, "special": False}
    assert events[0]["top_tokens"] == [{"id": 100, "text": "alt0", "logprob": -1.0, "special": False}]
    assert events[-1]["generated_text"] == "Hello world again"
    assert events[-1]["details"] == {"finish_reason": "length", "generated_tokens": 3, "seed": 7, "input_length": 2}


def test_stream_ending_on_a_stop_sequence_closes_with_a_special_token(client: FlaskClient) -> None:
    events = sse_events(client.post("/", json={**body(stop=["again"], max_new_tokens=9), "stream": True}).data)
    assert events[-1]["token"]["special"] is True and events[-1]["token"]["text"] == ""
    assert events[-1]["details"]["finish_reason"] == "stop_sequence"


def test_rejected_prompt_is_an_http_error_and_mid_stream_failure_an_event(client: FlaskClient,
                                                                         gateway: FakeGateway) -> None:
    gateway.failure = Overloaded("busy")
    reply = client.post("/generate_stream", json=body())
    assert reply.status_code == 429 and reply.json["error_type"] == "overloaded"
    gateway.failure = None
    gateway.mid_failure = InvalidRequest("boom")
    events = sse_events(client.post("/generate_stream", json=body()).data)
    assert events[-1] == {"error": "boom", "error_type": "validation"}
    assert gateway.streams[-1].closed


def test_info_tokenize_health(client: FlaskClient, gateway: FakeGateway) -> None:
    info = client.get("/info").json
    assert info["model_id"] == "tiny" and info["model_pipeline_tag"] == "text-generation"
    assert info["max_input_tokens"] == 1024 and info["max_total_tokens"] == 2048 and info["max_best_of"] == 1
    assert info["router"] == "berth" and info["sha"] is None and info["docker_label"] is None
    tokens = client.post("/tokenize", json={"inputs": "ab cd"}).json
    assert tokens == [{"id": 0, "text": "ab", "start": 0, "stop": 2}, {"id": 1, "text": "cd", "start": 3, "stop": 5}]
    assert client.post("/tokenize", json={"inputs": ""}).status_code == 422
    assert client.get("/health").status_code == 200
    gateway.ready = False
    unhealthy = client.get("/health")
    assert unhealthy.status_code == 503  # in TGI's error shape, from the one typed error
    assert unhealthy.json == {"error": "the default model is not ready", "error_type": "healthcheck",
                              "detail": "the default model is not ready"}


def test_null_parameters_and_a_single_stop_string_are_accepted(client: FlaskClient, gateway: FakeGateway) -> None:
    assert client.post("/generate", json={"inputs": "hi", "parameters": None}).status_code == 200
    reply = client.post("/generate", json={"inputs": "hi", "parameters": {"stop": "again", "details": True}})
    assert reply.json["details"]["finish_reason"] == "stop_sequence"
    assert gateway.requests[-1].sampling.stop == ("again",)


def test_generated_tokens_are_counted_in_metrics(app: Flask, client: FlaskClient) -> None:
    counted: list[tuple[str, int, int]] = []
    app.extensions["berth"].metrics.count_tokens = lambda *args: counted.append(args)
    client.post("/generate", json=body())
    client.post("/generate_stream", json=body()).get_data()
    assert counted == [("tiny", 2, 3), ("tiny", 2, 3)]


def test_tokens_that_arrive_together_are_written_in_one_chunk(app: Flask, gateway: FakeGateway) -> None:
    from berth_server.canonical import Delta, TokenInfo
    from berth_server.client.state import get_state
    from berth_server.protocols.tgi import service

    with app.test_request_context():
        batch = service.TgiRequests(get_state(), [parse(GenerateBody, body())], "tiny")
        generation = batch.start()
        pair = [TokenInfo(id=1, text="a", logprob=-0.1), TokenInfo(id=2, text="b", logprob=-0.2)]
        generation.streams[0].deltas = [Delta(request_id="r", text="ab", tokens=pair, completion_tokens=2,
                                               finish_reason="length")]
        (events,) = list(service.token_events(batch, generation, 0))
    assert [e["index"] for e in events] == [1, 2] and events[1]["generated_text"] == "ab"
