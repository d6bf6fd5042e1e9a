"""OpenAI Responses on a fake gateway (Flask test client, no processes): the typed event sequence, its fold,
input items as chat messages, tools, text.format, the bounded store and its routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from berth_server.canonical import Delta, GenerateRequest
from berth_server.errors import GenerationFailed, IncompleteGeneration, Overloaded
from berth_server.http.app import create_app
from berth_server.ipc import TokenSpan
from berth_server.launch_config import ModelDescription
from berth_server.protocols.responses.fold import fold_response
from berth_server.protocols.responses.items import chat_messages
from berth_server.protocols.responses.store import ResponseNotFound, ResponseStore, StoredResponse
from berth_server.protocols.responses.truncation import drop_oldest_turn
from berth_server.settings import Settings
from flask.testing import FlaskClient
from openai.types.responses import Response

from tests.unit.fakes.gateway import WORDS, FakeControl, FakeGateway, FakeStream
from tests.unit.test_openai_tool_calls import WORDS as TOOL_WORDS

TEXT = "".join(WORDS)
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
         {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]


class Finishing(FakeStream):
    """A fake stream whose last delta ends with `finish` (FakeStream always says "length")."""

    finish = "eos"

    def __iter__(self) -> Iterator[Delta]:
        for delta in super().__iter__():
            yield msgspec.structs.replace(delta, finish_reason=self.finish) if delta.finish_reason else delta


class Gateway(FakeGateway):
    """The fake gateway with a model description, a token count and a chosen finish reason."""

    def __init__(self, words: list[str] | None = None, finish: str = "eos", parser: str | None = None,
                 max_input_tokens: int = 4096, **kw: Any) -> None:
        super().__init__(words=words, **kw)
        self.finish, self.parser, self.max_input_tokens = finish, parser, max_input_tokens
        self.tokenized: list[GenerateRequest] = []

    def generate(self, request: GenerateRequest) -> FakeStream:
        stream = super().generate(request)
        stream.__class__ = Finishing
        stream.finish = self.finish  # type: ignore[attr-defined]
        return stream

    def describe(self, uid: str) -> ModelDescription:
        return ModelDescription(uid=uid, model_name="tiny", model_type="LLM", source="demo://tiny", engine="fake",
                                device="cpu", dtype="float32", abilities=["chat"], max_input_tokens=self.max_input_tokens,
                                max_total_tokens=8192, context_length=8192, max_batch_size=1, pid=1,
                                tool_call_parser=self.parser)

    def tokenize(self, uid: str, chat: GenerateRequest | None = None, **_: Any) -> list[TokenSpan]:
        """One token per message."""
        assert chat is not None and chat.messages is not None
        self.tokenized.append(chat)
        return [TokenSpan(id=i, text="x", start=i, stop=i + 1) for i in range(len(chat.messages))]


def client_for(tmp_path: Path, gateway: FakeGateway, **settings: Any) -> FlaskClient:
    return create_app(Settings(runtime_dir=tmp_path, **settings), gateway=gateway,
                      control=FakeControl()).test_client()


def create(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/responses", json={"model": "default", **body})


def named_events(text: str) -> list[dict[str, Any]]:
    """Named SSE events; each `event:` name must equal its data's type."""
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("event: "):
            data = json.loads(lines[1].removeprefix("data: "))
            assert data["type"] == lines[0].removeprefix("event: ")
            events.append(data)
    return events


# -- the event sequence and its fold ---------------------------------------------------------------
def test_stream_is_the_full_typed_sequence_and_folds_into_the_whole_reply(tmp_path: Path) -> None:
    client = client_for(tmp_path, Gateway(reasoning=["Let me think."]))
    reply = create(client, input="hi", stream=True)
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    events = named_events(reply.get_data(as_text=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    reasoning_events = ["response.output_item.added", "response.content_part.added",
                        "response.reasoning_text.delta", "response.reasoning_text.done",
                        "response.content_part.done", "response.output_item.done"]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", *reasoning_events,
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * 2,  # the fake sends two deltas a batch: three words, two deltas
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 4
    reasoning, message = final["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert message["content"][0]["text"] == TEXT and message["status"] == "completed"
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [item["id"] for item in done] == [reasoning["id"], message["id"]]
    assert done == final["output"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert {e["item_id"] for e in deltas} == {message["id"]} and {e["output_index"] for e in deltas} == {1}
    assert "".join(e["delta"] for e in deltas) == TEXT
    assert fold_response(events) == final  # the whole reply is the fold of these very events

    whole = create(client, input="hi").get_json()
    Response.model_validate(whole)  # the openai client's own type
    assert [item["type"] for item in whole["output"]] == ["reasoning", "message"]
    assert whole["output"][1]["content"][0]["text"] == TEXT and whole["usage"] == final["usage"]
    # One reasoning token, though the fake sends it in one batch with the first word.
    assert whole["usage"]["output_tokens_details"]["reasoning_tokens"] == 1


def test_max_tokens_is_incomplete_and_a_failure_is_response_failed(tmp_path: Path) -> None:
    incomplete = named_events(create(client_for(tmp_path, Gateway(finish="length")), input="hi",
                                     stream=True).get_data(as_text=True))
    assert incomplete[-1]["type"] == "response.incomplete"
    assert incomplete[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert incomplete[-1]["response"]["output"][0]["status"] == "incomplete"

    failing = Gateway(reasoning=["hmm"], mid_failure=GenerationFailed("the engine fell over"))
    events = named_events(create(client_for(tmp_path, failing), input="hi", stream=True).get_data(as_text=True))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "the engine fell over"}
    assert "_error" not in events[-1]  # the typed error is whole-only
    assert events[-2]["type"] == "response.output_item.done"  # the open item is closed first
    assert events[-2]["item"]["status"] == "incomplete" and events[-2]["item"]["content"][0]["text"] == "Hello"
    whole = create(client_for(tmp_path, failing), input="hi")
    assert whole.status_code == 500 and whole.get_json()["error"]["message"] == "the engine fell over"


def test_a_rejected_request_is_an_error_before_any_stream(tmp_path: Path) -> None:
    reply = create(client_for(tmp_path, Gateway(failure=Overloaded("busy"))), input="hi", stream=True)
    assert reply.status_code == 429 and reply.get_json()["error"]["type"] == "rate_limit_error"


def test_fold_needs_a_terminal_event() -> None:
    with pytest.raises(IncompleteGeneration):
        fold_response([{"type": "response.created", "sequence_number": 0, "response": {}}])


# -- requests: items, tools, formats ----------------------------------------------------------------
def test_input_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "I check."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"x\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ]
    assert chat_messages("sys", items) == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "I check.", "reasoning_content": "hmm", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_request_fields_reach_the_canonical_request(tmp_path: Path) -> None:
    gateway = Gateway()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    reply = create(client_for(tmp_path, gateway), input=[{"role": "user", "content": "hi"}], instructions="sys",
                   max_output_tokens=9, temperature=0, top_p=0.5, reasoning={"effort": "none"},
                   text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
                   include=["message.output_text.logprobs"], top_logprobs=2, metadata={"k": "v"}, user="u")
    assert reply.status_code == 200, reply.get_data(as_text=True)
    (request,) = gateway.requests
    assert request.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert request.sampling.max_new_tokens == 9 and request.sampling.greedy and request.sampling.top_p == 0.5
    assert request.enable_thinking is False and request.sampling.logprobs == 2
    assert request.sampling.constraint is not None and request.sampling.constraint.param == "text.format"
    body = reply.get_json()
    assert body["text"]["format"] == {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    assert body["metadata"] == {"k": "v"} and body["user"] == "u" and body["max_output_tokens"] == 9
    logprobs = body["output"][0]["content"][0]["logprobs"]
    assert [entry["token"] for entry in logprobs] == WORDS and len(logprobs[0]["top_logprobs"]) == 1


def test_function_calls_are_items_with_their_argument_events(tmp_path: Path) -> None:
    client = client_for(tmp_path, Gateway(TOOL_WORDS, parser="hermes"))
    events = named_events(create(client, input="weather?", tools=TOOLS, stream=True).get_data(as_text=True))
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    message, weather, time_call = final["output"]
    assert message["content"][0]["text"] == "I will check."
    assert [(c["type"], c["name"], json.loads(c["arguments"])) for c in (weather, time_call)] == [
        ("function_call", "get_weather", {"city": "Paris"}), ("function_call", "get_time", {})]
    assert weather["call_id"].startswith("call_") and weather["id"].startswith("fc_")
    for call in (weather, time_call):
        pieces = [e["delta"] for e in events
                  if e["type"] == "response.function_call_arguments.delta" and e["item_id"] == call["id"]]
        (done,) = [e for e in events
                   if e["type"] == "response.function_call_arguments.done" and e["item_id"] == call["id"]]
        assert "".join(pieces) == done["arguments"] == call["arguments"]
    whole = create(client, input="weather?", tools=TOOLS, parallel_tool_calls=False).get_json()
    assert [item["type"] for item in whole["output"]] == ["message", "function_call"]


def test_tool_choice_is_enforced_as_chat_enforces_it(tmp_path: Path) -> None:
    gateway = Gateway(['{"city": "Paris"}'])
    reply = create(client_for(tmp_path, gateway), input="weather?", tools=TOOLS,
                   tool_choice={"type": "function", "name": "get_weather"}).get_json()
    assert gateway.requests[0].sampling.constraint is not None  # the call is forced, not hoped for
    (call,) = reply["output"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    assert reply["tool_choice"] == {"type": "function", "name": "get_weather"}
    none = create(client_for(tmp_path, Gateway()), input="hi", tools=TOOLS, tool_choice="none").get_json()
    assert [item["type"] for item in none["output"]] == ["message"]


@pytest.mark.parametrize("body, status, needle", [
    ({"input": "hi", "tools": [{"type": "web_search_preview"}]}, 400, "web_search_preview"),
    ({"input": "hi", "tool_choice": {"type": "file_search"}}, 400, "file_search"),
    ({"input": "hi", "background": True}, 400, "background"),
    ({"input": "hi", "tool_choice": "required"}, 400, "tool_choice"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "item_reference"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400, "input_file"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "schema"),
    ({"input": "hi", "reasoning": {"effort": "max"}}, 400, "effort"),
    ({"input": "hi", "conversation": "conv_1"}, 400, "conversation"),
    ({}, 400, "input"),
    ({"input": "hi", "previous_response_id": "resp_gone"}, 404, "resp_gone"),
    ({"input": "hi", "model": "nope"}, 404, "nope"),
])
def test_bad_input_is_refused_in_openai_shape(tmp_path: Path, body: dict[str, Any], status: int,
                                              needle: str) -> None:
    gateway = Gateway()
    client = client_for(tmp_path, gateway)
    for stream in (False, True):
        reply = client.post("/v1/responses", json={**body, "stream": stream})
        assert reply.status_code == status, reply.get_data(as_text=True)
        error = reply.get_json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and needle in error["message"]
    assert not gateway.requests


# -- state: the store, previous_response_id, retrieve, delete, input items ---------------------------
def test_previous_response_id_continues_and_stored_responses_are_served(tmp_path: Path) -> None:
    gateway = Gateway()
    client = client_for(tmp_path, gateway)
    first = create(client, input="hi", instructions="sys").get_json()
    assert client.get(f"/v1/responses/{first['id']}").get_json() == first
    second = create(client, input="more", previous_response_id=first["id"]).get_json()
    assert gateway.requests[-1].messages == [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": TEXT},
                                             {"role": "user", "content": "more"}]  # instructions do not carry over
    assert second["previous_response_id"] == first["id"]
    page = client.get(f"/v1/responses/{second['id']}/input_items", query_string={"limit": 2}).get_json()
    assert [item["type"] for item in page["data"]] == ["message", "message"] and page["has_more"]
    assert page["data"][0]["content"][0]["text"] == "more"  # newest first
    rest = client.get(f"/v1/responses/{second['id']}/input_items",
                      query_string={"after": page["last_id"]}).get_json()
    assert [item["content"][0]["text"] for item in rest["data"]] == ["hi"] and not rest["has_more"]
    assert client.get(f"/v1/responses/{second['id']}/input_items", query_string={"limit": 0}).status_code == 400

    assert client.delete(f"/v1/responses/{first['id']}").get_json() == {
        "id": first["id"], "object": "response.deleted", "deleted": True}
    for reply in (client.get(f"/v1/responses/{first['id']}"), client.delete(f"/v1/responses/{first['id']}")):
        assert reply.status_code == 404 and reply.get_json()["error"]["type"] == "invalid_request_error"
    unstored = create(client, input="hi", store=False).get_json()
    assert unstored["store"] is False and client.get(f"/v1/responses/{unstored['id']}").status_code == 404


def test_the_store_is_bounded_oldest_out(tmp_path: Path) -> None:
    client = client_for(tmp_path, Gateway(), responses_store_max_count=2)
    ids = [create(client, input=f"turn {i}").get_json()["id"] for i in range(3)]
    assert [client.get(f"/v1/responses/{i}").status_code for i in ids] == [404, 200, 200]

    store = ResponseStore(tmp_path / "bytes.sqlite3", max_count=100, max_bytes=320)
    for name in ("a", "b", "c"):
        store.put(StoredResponse({"id": name, "output": [], "pad": "x" * 100}, []))
    assert store.ids() == ["b", "c"]  # each record is 155 bytes: two fit in 320
    with pytest.raises(ResponseNotFound):
        store.get("a")


def test_input_tokens_counts_the_rendered_request(tmp_path: Path) -> None:
    gateway = Gateway()
    reply = client_for(tmp_path, gateway).post("/v1/responses/input_tokens", json={
        "input": "hi", "instructions": "sys", "tools": TOOLS})
    assert reply.get_json() == {"object": "response.input_tokens", "input_tokens": 2}
    assert gateway.tokenized[0].tools is not None  # counted as generation renders it: tools included


def test_truncation_auto_drops_the_oldest_turns(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
             {"role": "user", "content": "two"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "three"}]
    gateway = Gateway(max_input_tokens=3)  # the fake counts a token per message
    client = client_for(tmp_path, gateway)
    assert create(client, input=turns, truncation="auto").status_code == 200
    assert gateway.requests[-1].messages == [{"role": "user", "content": "two"},
                                             {"role": "assistant", "content": "2"},
                                             {"role": "user", "content": "three"}]
    items = [{"type": "message", "role": "user"}, {"type": "function_call"}, {"type": "function_call_output"},
             {"type": "message", "role": "user"}]
    assert drop_oldest_turn(items) == items[3:] and drop_oldest_turn(items[3:]) is None


def test_a_codex_turn_is_served_and_its_metrics_counted(tmp_path: Path) -> None:
    """What Codex sends (CLIENTS.md): store false, the whole history, reasoning items it got back, its own keys."""
    gateway = Gateway()
    client = client_for(tmp_path, gateway, api_key="k")
    body = {
        "model": "default", "instructions": "You are Codex.", "store": False, "stream": True,
        "tools": [{"type": "function", "name": "shell", "description": "Run a command", "strict": False,
                   "parameters": {"type": "object", "properties": {"command": {"type": "array"}}}}],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc", "text": {"verbosity": "low"},
        "client_metadata": {"x": "y"},
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "I should ls."}],
             "content": None, "encrypted_content": None},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
             "arguments": "{\"command\": [\"ls\"]}", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        ],
    }
    assert client.post("/v1/responses", json=body).status_code == 401
    reply = client.post("/v1/responses", json=body, headers={"Authorization": "Bearer k"})
    events = named_events(reply.get_data(as_text=True))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["store"] is False
    (request,) = gateway.requests
    assert request.enable_thinking is True and request.tools is not None
    assert request.messages is not None and request.messages[-2]["reasoning_content"] == "I should ls."
    assert request.messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}
    metrics = client.get("/metrics", headers={"Authorization": "Bearer k"}).get_data(as_text=True)
    assert 'berth_generated_tokens_total{model="default"} 3.0' in metrics  # the fake's three words
    assert 'berth_prompt_tokens_total{model="default"} 5.0' in metrics
