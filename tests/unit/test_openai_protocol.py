"""OpenAI schemas, conversion and replies, on a fake gateway (Flask test client, no processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_server.errors import GenerationFailed, InvalidRequest
from berth_server.http.app import create_app
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest, parse
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import WORDS, FakeControl, FakeGateway

TEXT = "".join(WORDS)
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


def client_for(tmp_path, gateway: FakeGateway) -> FlaskClient:
    """A test client on a fake gateway."""
    return create_app(Settings(runtime_dir=tmp_path), gateway=gateway, control=FakeControl()).test_client()


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def client(tmp_path, gateway: FakeGateway) -> FlaskClient:
    return client_for(tmp_path, gateway)


def sse_payloads(body: str) -> list[Any]:
    """Parse SSE data lines (comments skipped); [DONE] stays a string."""
    events = []
    for block in body.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# -- schemas --------------------------------------------------------------------------------
def test_chat_conversion_maps_sampling_and_thinking() -> None:
    body = parse(ChatCompletionRequest, {
        **CHAT, "max_completion_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 11,
        "stop": "END", "stop_token_ids": [2], "logprobs": True, "top_logprobs": 2, "n": 2,
        "chat_template_kwargs": {"enable_thinking": False, "thinking": False}, "unknown_key": 1,
        "messages": [{"role": "system", "content": "s"},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    })
    (first,) = body.to_generate_requests("default", "rid")  # n choices: one request, fanned out by the model
    assert first.request_id == "rid" and first.n == 2 and not first.return_prompt_text
    assert first.sampling.greedy and first.sampling.max_new_tokens == 7 and first.sampling.top_k == 3
    assert first.sampling.stop == ("END",) and first.sampling.stop_token_ids == (2,)
    assert first.sampling.logprobs == 2 and first.token_details
    assert first.sampling.seed == 11  # choice i samples with seed + i (canonical.choice_seed)
    assert first.enable_thinking is False and first.split_reasoning
    assert first.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "a\nb"}]


def test_tgi_client_nulls_are_accepted() -> None:
    body = parse(ChatCompletionRequest, {
        "model": "tgi", "messages": [{"role": "user", "content": "hi", "name": None, "tool_calls": None}],
        "logit_bias": None, "n": None, "tools": None, "logprobs": False, "top_logprobs": None, "stop": None,
        "response_format": None, "tool_prompt": "", "stream": False})
    (request,) = body.to_generate_requests("default", "r")
    assert request.sampling.logprobs is None and not request.sampling.greedy


@pytest.mark.parametrize("override, needle", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "image_url"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": "{oops"}}}, "response_format"),
    ({"logit_bias": {"the": 1.0}}, "logit_bias"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "nope"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"echo": True}, "echo"),
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"prompt_logprobs": 1}, "prompt_logprobs"),
])
def test_invalid_chat_fields_are_400(client: FlaskClient, override: dict[str, Any], needle: str) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, **override})
    assert response.status_code == 400, response.json
    assert needle in response.json["error"]["message"]
    assert response.json["error"]["type"] == "invalid_request_error" and response.json["detail"]


def test_completion_prompt_shapes() -> None:
    assert parse(CompletionRequest, {"prompt": ["one"]}).to_generate_requests("m", "r")[0].prompt == "one"
    ids = parse(CompletionRequest, {"prompt": [1, 2, 3]}).to_generate_requests("m", "r")[0]
    assert ids.prompt_token_ids == [1, 2, 3] and ids.prompt is None
    assert parse(CompletionRequest, {"prompt": [[4, 5]]}).to_generate_requests("m", "r")[0].prompt_token_ids == [4, 5]
    with pytest.raises(InvalidRequest, match="suffix"):
        parse(CompletionRequest, {"prompt": "x", "suffix": "y"})
    with pytest.raises(InvalidRequest, match="best_of"):
        parse(CompletionRequest, {"prompt": "x", "best_of": 3})
    assert parse(CompletionRequest, {"prompt": "x", "best_of": 2, "n": 2, "use_beam_search": False}).best_of == 2
    several = parse(CompletionRequest, {"prompt": ["a", "b"], "n": 2}).to_generate_requests("m", "r")
    assert [(r.request_id, r.prompt, r.n) for r in several] == [("r-0", "a", 2), ("r-1", "b", 2)]
    ids = parse(CompletionRequest, {"prompt": [[7, 8], [9]]}).to_generate_requests("m", "r")
    assert [r.prompt_token_ids for r in ids] == [[7, 8], [9]]


# -- replies --------------------------------------------------------------------------------
def test_chat_reply_shape_and_usage(client: FlaskClient) -> None:
    reply = client.post("/v1/chat/completions", json=CHAT).json
    assert reply["object"] == "chat.completion" and reply["system_fingerprint"] and reply["model"] == "default"
    (choice,) = reply["choices"]
    assert choice["message"]["content"] == TEXT and choice["message"]["role"] == "assistant"
    assert "logprobs" in choice and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_chat_reasoning_is_split(tmp_path) -> None:
    client = client_for(tmp_path, FakeGateway(reasoning=["think"]))
    message = client.post("/v1/chat/completions", json=CHAT).json["choices"][0]["message"]
    assert message["reasoning_content"] == "think" and message["content"] == TEXT


def test_chat_logprobs(client: FlaskClient) -> None:
    choice = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 1}).json["choices"][0]
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == WORDS and content[0]["top_logprobs"][0]["logprob"] == -0.5


def test_chat_n_fans_out(client: FlaskClient, gateway: FakeGateway) -> None:
    reply = client.post("/v1/chat/completions", json={**CHAT, "n": 3}).json
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert len(gateway.requests) == 1 and gateway.requests[0].n == 3  # one request, templated once
    assert reply["usage"]["completion_tokens"] == 9


def test_chat_stream_chunks_usage_and_done(client: FlaskClient, gateway: FakeGateway) -> None:
    response = client.post("/v1/chat/completions",
                           json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    assert body.startswith(":")  # the early comment that pushes the headers out
    events = sse_payloads(body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["system_fingerprint"]
        for choice in chunk["choices"]:
            assert choice["delta"]["role"] == "assistant" and "tool_calls" in choice["delta"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]) == TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    assert gateway.streams[0].closed


def test_stream_failure_mid_way_becomes_error_event(tmp_path) -> None:
    gateway = FakeGateway(mid_failure=GenerationFailed("engine broke"))
    client = client_for(tmp_path, gateway)
    events = sse_payloads(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).get_data(as_text=True))
    error = events[-1]
    assert error["error"]["message"] == "engine broke" and error["error_type"] == "generation"
    assert gateway.streams[0].closed


def test_rejected_request_is_http_error_before_stream(tmp_path) -> None:
    client = client_for(tmp_path, FakeGateway(failure=InvalidRequest("prompt too long")))
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 400 and response.json["error"]["message"] == "prompt too long"


def test_unknown_model_is_404(client: FlaskClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert response.status_code == 404 and "'nope'" in response.json["error"]["message"]


def test_completion_reply_echo_and_logprobs(client: FlaskClient) -> None:
    reply = client.post("/v1/completions", json={"prompt": "Say", "echo": True, "logprobs": 1}).json
    (choice,) = reply["choices"]
    assert reply["object"] == "text_completion" and choice["text"] == "Say" + TEXT
    assert choice["logprobs"]["tokens"] == WORDS and choice["logprobs"]["text_offset"][0] == 3
    assert reply["usage"]["completion_tokens"] == 3


def test_completion_stream(client: FlaskClient) -> None:
    body = client.post("/v1/completions", json={"prompt": "Say", "stream": True}).get_data(as_text=True)
    events = sse_payloads(body)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == TEXT


def test_models_list(client: FlaskClient) -> None:
    reply = client.get("/v1/models").json
    (model,) = reply["data"]
    assert reply["object"] == "list" and model["id"] == "default" and model["object"] == "model"
    assert model["owned_by"] == "berth" and model["model_type"] == "LLM" and model["model_ability"] == ["chat"]
    assert model["max_model_len"] == 64


def test_tgi_client_chat_stream_has_no_done_line(client: FlaskClient) -> None:
    body = client.post("/v1/chat/completions", json={**CHAT, "model": "tgi", "stream": True}).get_data(as_text=True)
    events = sse_payloads(body)
    assert "[DONE]" not in events and events[-1]["choices"][0]["finish_reason"] == "length"


def test_logit_bias_is_clamped_to_openai_range_once_for_every_engine() -> None:
    request = ChatCompletionRequest.model_validate({**CHAT, "logit_bias": {"3": 500, "4": -900, "5": 2.5}})
    assert request.logit_biases() == ((3, 100.0), (4, -100.0), (5, 2.5))
