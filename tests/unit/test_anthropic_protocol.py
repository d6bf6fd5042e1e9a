"""Anthropic Messages: schemas and their chat conversion, the fold, replies and errors, on scripted fake gateways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from berth_server.canonical import Accepted, Delta, GenerateRequest
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest, NotReady, Overloaded
from berth_server.http.app import create_app
from berth_server.ipc import TokenSpan
from berth_server.launch_config import ModelDescription
from berth_server.protocols.anthropic.errors import error_type, status_of
from berth_server.protocols.anthropic.fold import fold_message
from berth_server.protocols.anthropic.schemas import CountTokensRequest, MessagesRequest
from berth_server.protocols.wire import parse
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeControl, FakeGateway

TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
BODY = {"model": "default", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


class ScriptedStream:
    """A generation stream that sends the given deltas (one batch each)."""

    def __init__(self, request: GenerateRequest, deltas: list[Delta], failure: BerthError | None) -> None:
        self.request = request
        self.deltas = deltas
        self.failure = failure
        self.closed = False

    @property
    def accepted(self) -> Accepted:
        if self.failure is not None:
            raise self.failure
        return Accepted(request_id=self.request.request_id, prompt_tokens=7)

    def batches(self) -> Any:
        for delta in self.deltas:
            if delta.finish_reason == "error":
                raise GenerationFailed("the model process died")
            yield [delta]

    def close(self) -> None:
        self.closed = True


class ScriptedGateway(FakeGateway):
    """Deltas made of (reasoning, text) pairs, ending with `finish`; records requests and tokenize calls."""

    def __init__(self, pieces: list[tuple[str, str]], finish: str = "eos", stop: str | None = None,
                 parser: str | None = None, reasoning: bool = False, failure: BerthError | None = None) -> None:
        super().__init__()
        self.pieces, self.finish, self.stop = pieces, finish, stop
        self.parser, self.reasoning_model, self.failure = parser, reasoning, failure
        self.tokenized: list[GenerateRequest] = []

    def generate(self, request: GenerateRequest) -> ScriptedStream:  # type: ignore[override]
        self.requests.append(request)
        deltas = [Delta(request_id=request.request_id, reasoning=r, text=t, completion_tokens=i + 1)
                  for i, (r, t) in enumerate(self.pieces)]
        deltas[-1] = Delta(request_id=request.request_id, reasoning=deltas[-1].reasoning, text=deltas[-1].text,
                           completion_tokens=len(deltas), finish_reason=self.finish,  # type: ignore[arg-type]
                           stop_sequence=self.stop)
        return ScriptedStream(request, deltas, self.failure)

    def describe(self, uid: str) -> ModelDescription:
        return ModelDescription(uid=uid, model_name="tiny", model_type="LLM", source="demo://tiny", engine="fake",
                                device="cpu", dtype="float32", abilities=["chat"], max_input_tokens=32,
                                max_total_tokens=64, context_length=64, max_batch_size=1, pid=1,
                                reasoning=self.reasoning_model, tool_call_parser=self.parser)

    def tokenize(self, uid: str, chat: GenerateRequest | None = None, **_: Any) -> list[TokenSpan]:
        assert chat is not None
        self.tokenized.append(chat)
        return [TokenSpan(id=i, text="x", start=i, stop=i + 1) for i in range(11)]


def client_for(tmp_path: Path, gateway: FakeGateway, **settings: Any) -> FlaskClient:
    config = Settings(runtime_dir=tmp_path, **settings)
    return create_app(config, gateway=gateway, control=FakeControl()).test_client()


def named_events(text: str) -> list[dict[str, Any]]:
    """Named SSE events; each `event:` name must equal its data's type."""
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("event: "):
            event = json.loads(lines[1].removeprefix("data: "))
            assert event["type"] == lines[0].removeprefix("event: ")
            events.append(event)
    return events


def accumulated(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the anthropic SDK's own stream accumulator builds from the events."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        if event["type"] not in ("ping", "error"):
            snapshot = accumulate_event(event=event, current_snapshot=snapshot,  # type: ignore[arg-type]
                                        json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot.to_dict()


def both(client: FlaskClient, **extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole reply (checked against the SDK's Message type) and the streamed events of the same request."""
    whole = client.post("/v1/messages", json={**BODY, **extra})
    assert whole.status_code == 200, whole.get_data(as_text=True)
    Message.model_validate(whole.get_json())
    streamed = client.post("/v1/messages", json={**BODY, **extra, "stream": True})
    assert streamed.status_code == 200 and streamed.mimetype == "text/event-stream"
    return whole.get_json(), named_events(streamed.get_data(as_text=True))


def without_id(message: dict[str, Any]) -> dict[str, Any]:
    """The message without its ids (two requests) and without the None fields the SDK's own type adds
    (stop_details)."""
    return {**{k: v for k, v in message.items() if v is not None or k in WIRE_FIELDS}, "id": None,
            "content": [{**b, "id": None} if b["type"] == "tool_use" else b for b in message["content"]]}


WIRE_FIELDS = {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}


# -- schemas --------------------------------------------------------------------------------------
def test_a_conversation_becomes_the_chat_request_it_means() -> None:
    body = parse(MessagesRequest, {
        **BODY, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["END"], "temperature": 0,
        "top_k": 5, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "get_weather",
                                                   "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u"}, "cache_control": {"type": "ephemeral"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "They want weather.", "signature": ""},
                {"type": "redacted_thinking", "data": "xx"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": [{"type": "text", "text": "sunny"}]},
                                         {"type": "text", "text": "Thanks."}]}]})
    chat = body.to_chat_request(enable_thinking=True)
    assert [m.to_template() for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [  # thinking is not shown to the model
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "Thanks."}]
    assert chat.tools == [{"type": "function", "function": {
        "name": "get_weather", "parameters": TOOLS[0]["input_schema"], "description": "Weather in a city"}}]
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    (request,) = chat.to_generate_requests("default", "r", None, None)
    assert request.enable_thinking is True and request.split_reasoning
    assert request.sampling.greedy and request.sampling.stop == ("END",) and request.sampling.top_k == 5
    assert request.sampling.max_new_tokens == 16
    assert request.sampling.constraint is not None and request.sampling.constraint.param == "tool_choice"


@pytest.mark.parametrize("choice, chat_choice, parallel", [
    ({"type": "auto"}, "auto", True), ({"type": "any"}, "required", True), ({"type": "none"}, "none", True),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False)])
def test_tool_choice_maps_to_chat(choice: dict[str, Any], chat_choice: Any, parallel: bool) -> None:
    chat = parse(MessagesRequest, {**BODY, "tools": TOOLS, "tool_choice": choice}).to_chat_request(None)
    assert chat.tool_choice == chat_choice and chat.parallel_tool_calls is parallel


def test_a_prefilled_reply_is_continued() -> None:
    body = parse(MessagesRequest, {**BODY, "messages": [{"role": "user", "content": "Count"},
                                                        {"role": "assistant", "content": "1, 2,"}]})
    (request,) = body.to_chat_request(None).to_generate_requests("default", "r")
    assert request.continue_final_message and not request.add_generation_prompt


@pytest.mark.parametrize("model_reasons, asked, switch", [
    (True, {"type": "disabled"}, False), (False, {"type": "disabled"}, None),
    (False, {"type": "enabled", "budget_tokens": 1024}, True), (True, None, None),
    (True, {"type": "adaptive", "display": "summarized"}, None), (True, {"type": "between_tools"}, False)])
def test_thinking_switch(model_reasons: bool, asked: Any, switch: bool | None) -> None:
    body = parse(CountTokensRequest, {"model": "m", "messages": BODY["messages"], "thinking": asked})
    assert body.thinking_switch(model_reasons) is switch


def test_output_format_is_a_json_schema_constraint() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = parse(MessagesRequest, {**BODY, "output_config": {"effort": "low",
                                                             "format": {"type": "json_schema", "schema": schema}}})
    (request,) = body.to_chat_request(None).to_generate_requests("default", "r")
    constraint = request.sampling.constraint
    assert constraint is not None and constraint.kind == "json_schema" and json.loads(constraint.value) == schema


@pytest.mark.parametrize("override, needle", [
    ({"output_config": {"format": {"type": "regex", "schema": {}}}}, "output_config.format.type"),
    ({"thinking": {"type": "sometimes"}}, "thinking.type"),
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "'tool_use' block cannot be in a 'user' message"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "document"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"tool_choice": {"type": "tool"}}, "needs the tool's name"),
    ({"thinking": {"type": "enabled"}}, "budget_tokens"),
    ({"stop_sequences": "END"}, "stop_sequences"),
])
def test_bad_bodies_are_400_in_anthropics_envelope(tmp_path: Path, override: dict[str, Any], needle: str) -> None:
    body = {k: v for k, v in {**BODY, **override}.items() if v is not None}
    reply = client_for(tmp_path, FakeGateway()).post("/v1/messages", json=body)
    assert reply.status_code == 400
    error = reply.get_json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert needle in error["error"]["message"], error


def test_images_are_refused_naming_the_block(tmp_path: Path) -> None:
    gateway = ScriptedGateway([("", "a")])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    for content, where in (([{"type": "text", "text": "What is it?"}, image], "messages.0.content.1"),
                           ([{"type": "tool_result", "tool_use_id": "t", "content": [image]}], "messages.0.content.0.content.0")):
        reply = client_for(tmp_path, gateway).post("/v1/messages", json={
            **BODY, "messages": [{"role": "user", "content": content}]})
        assert reply.status_code == 400 and reply.get_json()["error"]["message"].startswith(where + ": image blocks")
    assert gateway.requests == []  # refused before the model was asked


# -- replies --------------------------------------------------------------------------------------
def test_whole_equals_the_sdks_accumulation_of_the_stream(tmp_path: Path) -> None:
    gateway = ScriptedGateway([("Let me", ""), (" think.", ""), ("", "Hello"), ("", " there")])
    whole, events = both(client_for(tmp_path, gateway))
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert events[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert whole["content"] == [{"type": "thinking", "thinking": "Let me think.", "signature": ""},
                                {"type": "text", "text": "Hello there"}]
    assert whole["stop_reason"] == "end_turn" and whole["stop_sequence"] is None
    assert whole["usage"] == {"input_tokens": 7, "output_tokens": 4}
    assert whole["id"].startswith("msg_") and whole["model"] == "default" and whole["role"] == "assistant"
    assert without_id(accumulated(events)) == without_id(whole)


@pytest.mark.parametrize("finish, stop, reason, sequence", [
    ("length", None, "max_tokens", None), ("stop", "END", "stop_sequence", "END"),
    ("stop", "<|im_end|>", "end_turn", None),  # the model's own stop string is not one the client asked for
    ("stop", None, "end_turn", None)])
def test_stop_reasons(tmp_path: Path, finish: str, stop: str | None, reason: str, sequence: str | None) -> None:
    whole, events = both(client_for(tmp_path, ScriptedGateway([("", "a")], finish, stop)),
                         stop_sequences=["END"])
    assert (whole["stop_reason"], whole["stop_sequence"]) == (reason, sequence)
    assert events[-2]["delta"] == {"stop_reason": reason, "stop_sequence": sequence, "stop_details": None}


def test_a_forced_tool_call_is_a_tool_use_block(tmp_path: Path) -> None:
    pieces = [("", "I'll look.\n<tool_call>\n"), ("", '{"name": "get_weather", "arguments": {"ci'),
              ("", 'ty": "Paris"}}\n</tool_call>')]
    whole, events = both(client_for(tmp_path, ScriptedGateway(pieces, parser="hermes")), tools=TOOLS,
                         tool_choice={"type": "any"})
    assert [b["type"] for b in whole["content"]] == ["text", "tool_use"]
    call = whole["content"][1]
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris"} and call["id"].startswith("toolu_")
    assert whole["stop_reason"] == "tool_use"
    pieces_sent = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
                   and e["delta"]["type"] == "input_json_delta"]
    assert len(pieces_sent) == 2 and json.loads("".join(pieces_sent)) == {"city": "Paris"}
    assert without_id(accumulated(events)) == without_id(whole)


def test_a_call_cut_by_max_tokens_stays_max_tokens(tmp_path: Path) -> None:
    pieces = [("", "<tool_call>\n"), ("", '{"name": "get_weather", "arguments": {"city": "Par')]
    whole, events = both(client_for(tmp_path, ScriptedGateway(pieces, finish="length", parser="hermes")),
                         tools=TOOLS)
    assert whole["stop_reason"] == "max_tokens"
    assert whole["content"][0]["input"] == {}  # the SDK parses partial JSON: the unfinished string is left out
    assert without_id(accumulated(events)) == without_id(whole)


def test_malformed_arguments_are_sent_as_far_as_they_are_well_formed(tmp_path: Path) -> None:
    """The SDK raises on partial_json that is no JSON object prefix: such a piece is held back, and the
    input is the object as far as the model wrote it well, streamed and whole alike (never a 500)."""
    pieces = [("", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '),
              ("", '"when": nope, "x": 1}}\n</tool_call>')]
    whole, events = both(client_for(tmp_path, ScriptedGateway(pieces, parser="hermes")), tools=TOOLS)
    assert whole["content"][0]["input"] == {"city": "Paris"} and whole["stop_reason"] == "tool_use"
    sent = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
    assert sent == '{"city": "Paris", '
    assert without_id(accumulated(events)) == without_id(whole)


def test_an_error_mid_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    client = client_for(tmp_path, ScriptedGateway([("", "a"), ("", "b")], finish="error"))
    events = named_events(client.post("/v1/messages", json={**BODY, "stream": True}).get_data(as_text=True))
    assert events[0]["type"] == "message_start" and events[-1] == {
        "type": "error", "error": {"type": "api_error", "message": "the model process died"}}
    whole = client.post("/v1/messages", json=BODY)
    assert whole.status_code == 500 and whole.get_json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("failure, status, kind", [
    (InvalidRequest("too long"), 400, "invalid_request_error"), (Overloaded("busy"), 529, "overloaded_error"),
    (NotReady("loading"), 529, "overloaded_error")])
def test_a_refused_generation_is_an_error_before_the_stream(tmp_path: Path, failure: BerthError, status: int,
                                                            kind: str) -> None:
    client = client_for(tmp_path, ScriptedGateway([("", "a")], failure=failure))
    for stream in (False, True):
        reply = client.post("/v1/messages", json={**BODY, "stream": stream})
        assert reply.status_code == status and reply.get_json()["error"] == {"type": kind, "message": failure.message}


def test_unknown_model_is_404_not_found_error(tmp_path: Path) -> None:
    reply = client_for(tmp_path, FakeGateway()).post("/v1/messages", json={**BODY, "model": "claude-x"})
    assert reply.status_code == 404 and reply.get_json()["error"]["type"] == "not_found_error"
    wrong_method = client_for(tmp_path, FakeGateway()).get("/v1/messages")
    assert wrong_method.status_code == 405 and wrong_method.get_json()["type"] == "error"


@pytest.mark.parametrize("asked, sent", [(16, 16), (63, 63), (64, None), (32000, None)])
def test_a_max_tokens_no_context_could_hold_means_as_many_as_fit(tmp_path: Path, asked: int, sent: int | None) -> None:
    """The fake model's MAX_TOTAL_TOKENS is 64: Claude Code's 32,000 gets what fits instead of a 400."""
    gateway = ScriptedGateway([("", "a")])
    assert client_for(tmp_path, gateway).post("/v1/messages", json={**BODY, "max_tokens": asked}).status_code == 200
    assert gateway.requests[-1].sampling.max_new_tokens == sent


def test_reachable_through_invocations_with_its_own_shapes(tmp_path: Path) -> None:
    """SageMaker: route=/v1/messages runs this view, with Anthropic's reply and error shapes."""
    client = client_for(tmp_path, ScriptedGateway([("", "Hello")]))
    route = {"X-Amzn-SageMaker-Custom-Attributes": "route=/v1/messages"}
    whole = client.post("/invocations", json=BODY, headers=route)
    assert whole.status_code == 200 and whole.get_json()["content"] == [{"type": "text", "text": "Hello"}]
    streamed = client.post("/invocations", json={**BODY, "stream": True}, headers=route)
    direct = client.post("/v1/messages", json={**BODY, "stream": True})
    kinds = [e["type"] for e in named_events(streamed.get_data(as_text=True))]
    assert kinds == [e["type"] for e in named_events(direct.get_data(as_text=True))] and kinds[0] == "message_start"
    refused = client.post("/invocations", json={**BODY, "max_tokens": 0}, headers=route)
    assert refused.status_code == 400 and refused.get_json()["error"]["type"] == "invalid_request_error"


def test_the_thinking_budget_reaches_the_model_and_must_be_below_max_tokens(tmp_path: Path) -> None:
    gateway = ScriptedGateway([("", "a")], reasoning=True)
    client = client_for(tmp_path, gateway)
    body = {**BODY, "max_tokens": 64, "thinking": {"type": "enabled", "budget_tokens": 32}}
    assert client.post("/v1/messages", json=body).status_code == 200
    assert gateway.requests[-1].thinking_budget == 32 and gateway.requests[-1].enable_thinking is True
    client.post("/v1/messages", json={**BODY, "thinking": {"type": "adaptive"}})
    assert gateway.requests[-1].thinking_budget is None
    refused = client.post("/v1/messages", json={**body, "max_tokens": 32})
    assert refused.status_code == 400 and "budget_tokens" in refused.get_json()["error"]["message"]


def test_disabled_thinking_on_a_thinking_model_turns_it_off(tmp_path: Path) -> None:
    gateway = ScriptedGateway([("", "a")], reasoning=True)
    client_for(tmp_path, gateway).post("/v1/messages", json={**BODY, "thinking": {"type": "disabled"}})
    assert gateway.requests[-1].enable_thinking is False


def test_count_tokens_renders_the_same_request(tmp_path: Path) -> None:
    gateway = ScriptedGateway([("", "a")])
    reply = client_for(tmp_path, gateway).post("/v1/messages/count_tokens", json={
        "model": "default", "messages": BODY["messages"], "tools": TOOLS,
        "thinking": {"type": "enabled", "budget_tokens": 2000}})
    assert reply.status_code == 200 and reply.get_json() == {"input_tokens": 11}
    (chat,) = gateway.tokenized
    assert chat.tools and chat.tools[0]["function"]["name"] == "get_weather" and chat.enable_thinking is True
    assert chat.messages == [{"role": "user", "content": "hi"}]


def test_x_api_key_and_bearer_are_both_accepted(tmp_path: Path) -> None:
    client = client_for(tmp_path, ScriptedGateway([("", "a")]), api_key="k")
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14"}
    assert client.post("/v1/messages", json=BODY, headers={**headers, "x-api-key": "k"}).status_code == 200
    assert client.post("/v1/messages", json=BODY, headers={**headers, "Authorization": "Bearer k"}).status_code == 200
    refused = client.post("/v1/messages", json=BODY, headers={**headers, "x-api-key": "nope"})
    assert refused.status_code == 401 and refused.get_json()["error"]["type"] == "authentication_error"


# -- errors and the fold ------------------------------------------------------------------------------
def test_status_and_type_table() -> None:
    assert [error_type(s) for s in (400, 401, 403, 404, 405, 413, 429, 500, 504, 507, 529)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "invalid_request_error", "request_too_large", "rate_limit_error", "api_error", "timeout_error", "api_error",
        "overloaded_error"]
    assert status_of(Overloaded("x")) == 529 and status_of(InvalidRequest("x")) == 400


def test_fold_builds_the_message_and_usage_totals_replace() -> None:
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "x",
                                                  "content": [], "stop_reason": None, "stop_sequence": None,
                                                  "usage": {"input_tokens": 3, "output_tokens": 0}}}
    events = [start, {"type": "ping"},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t",
                                                                             "name": "f", "input": {}}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": [1'}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ", 2]}"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
               "usage": {"output_tokens": 9, "input_tokens": None}},
              {"type": "message_stop"}]
    message = fold_message(events)
    assert message["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1, 2]}}]
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 9} and message["stop_reason"] == "tool_use"
    assert start["message"]["content"] == []  # the events are not changed by folding them
    assert without_id(accumulated(events)) == without_id(message)
    with pytest.raises(GenerationFailed):
        fold_message(events[2:])
