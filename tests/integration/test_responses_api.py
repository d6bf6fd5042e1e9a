"""OpenAI Responses (/v1/responses) on the real SmolLM2, through the real `openai` client, per engine.

Greedy text equals the chat-completions text of the same conversation (instructions as the system
message); streamed (client.responses.stream, its typed events) and whole replies agree, item ids
included; a forced function call loops back through function_call_output and previous_response_id;
text.format json_schema gives schema-valid JSON; stored responses are retrieved, listed and deleted;
bad input is a 400 in OpenAI's error shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from .conftest import RunningServer, checkpoint_engines
from .test_xinference_client import llm_registration

pytestmark = pytest.mark.timeout(600)

MAX_NEW = 24
INSTRUCTIONS = "You are a calculator. Use the tools."
QUESTION = "What is the capital of France?"
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 999}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS: Any = [{"type": "function", "name": "add", "description": "Add two integers", "parameters": ADD,
               "strict": True}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0, timeout=300)


def test_greedy_text_equals_chat_completions_and_stream_equals_whole(smollm2_server: RunningServer) -> None:
    client = _client(smollm2_server)
    chat = client.chat.completions.create(model="smollm2", max_tokens=MAX_NEW, temperature=0,
                                          messages=[{"role": "user", "content": QUESTION}])
    whole = client.responses.create(model="smollm2", input=QUESTION, max_output_tokens=MAX_NEW, temperature=0)
    assert whole.status == "completed" and whole.output_text == chat.choices[0].message.content
    assert whole.output_text == "The capital of France is Paris."  # the README's example
    assert whole.usage is not None and chat.usage is not None
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                     chat.usage.completion_tokens)
    assert whole.usage.total_tokens == chat.usage.total_tokens
    counted = client.responses.input_tokens.count(model="smollm2", input=QUESTION)
    assert counted.input_tokens == whole.usage.input_tokens

    with client.responses.stream(model="smollm2", input=QUESTION, max_output_tokens=MAX_NEW,
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert kind in kinds
    assert final.output_text == whole.output_text
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    done_items = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.id for i in done_items] == [i.id for i in final.output]  # stream ids are the response's ids
    assert all(e.item_id == final.output[0].id for e in events if e.type == "response.output_text.delta")
    assert final.usage == whole.usage


def test_max_output_tokens_is_incomplete(smollm2_server: RunningServer) -> None:
    client = _client(smollm2_server)
    reply = client.responses.create(model="smollm2", input="Write a long story about a dragon.",
                                    max_output_tokens=3, temperature=0)
    assert reply.status == "incomplete" and reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage is not None and reply.usage.output_tokens == 3
    events = list(client.responses.create(model="smollm2", input="Write a long story about a dragon.",
                                          max_output_tokens=3, temperature=0, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output[0].content[0].text == reply.output_text  # type: ignore[union-attr]


def test_forced_tool_call_loop_with_stored_responses(smollm2_server: RunningServer) -> None:
    client = _client(smollm2_server)
    first = client.responses.create(model="smollm2", instructions=INSTRUCTIONS, input="Add 2 and 3.", tools=TOOLS,
                                    max_output_tokens=60,
                                    tool_choice={"type": "function", "name": "add"}, temperature=0)
    assert first.status == "completed"
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "add" and call.call_id and call.id
    jsonschema.validate(json.loads(call.arguments), ADD)
    assert client.responses.retrieve(first.id).output[-1].id == call.id

    arguments = json.loads(call.arguments)
    second = client.responses.create(
        model="smollm2", previous_response_id=first.id, tools=TOOLS, max_output_tokens=12, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": str(arguments["a"] + arguments["b"])}])
    assert second.previous_response_id == first.id and second.output_text
    assert all(item.type == "message" for item in second.output)
    items = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "function_call", "function_call_output"]
    # The same conversation, sent whole (as Codex sends it, store false), gives the same greedy answer.
    resent = client.responses.create(
        model="smollm2", tools=TOOLS, max_output_tokens=12, temperature=0, store=False,
        input=[{"role": "user", "content": "Add 2 and 3."},
               {"type": "function_call", "call_id": call.call_id, "name": "add", "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id,
                "output": str(arguments["a"] + arguments["b"])}])
    assert resent.output_text == second.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resent.id)

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve(first.id)
    assert first.id in str(missing.value.body)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="smollm2", previous_response_id=first.id, input="again")


def test_json_schema_format_is_enforced(smollm2_server: RunningServer) -> None:
    client = _client(smollm2_server)
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    reply = client.responses.create(model="smollm2", input="Describe a person.", text=text,  # type: ignore[arg-type]
                                    max_output_tokens=60, temperature=0)
    assert reply.status == "completed", reply.output_text
    jsonschema.validate(json.loads(reply.output_text), PERSON)


@pytest.mark.parametrize("body, needle", [
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "web_search"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input_image"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_bad_input_is_a_400_in_openai_shape(smollm2_server: RunningServer, body: dict[str, Any],
                                            needle: str) -> None:
    for stream in (False, True):
        reply = httpx.post(smollm2_server.url("/v1/responses"), json={"model": "smollm2", "stream": stream, **body},
                           timeout=60)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and needle in error["message"]
    with pytest.raises(openai.BadRequestError):
        _client(smollm2_server).responses.create(model="smollm2", **body)


@pytest.fixture
def thinking_model(smollm2_server: RunningServer, tiny_reasoning_model: Path) -> Iterator[str]:
    """The tiny thinking-template model (it opens <think> unless thinking is off), launched beside SmolLM2.

    It runs on transformers whatever the server's engine (the reasoning split is the model process's, the
    same on every engine), so it is checked once, on the first engine's server.
    """
    if smollm2_server.engine != checkpoint_engines()[0]:
        pytest.skip("the thinking model runs on transformers on every server: checked once")
    registration = llm_registration("responses-think", tiny_reasoning_model,
                                    model_ability=["chat", "generate", "reasoning", "hybrid"],
                                    reasoning_start_tag="<think>", reasoning_end_tag="</think>")
    post = lambda path, body: httpx.post(smollm2_server.url(path), json=body, timeout=300)
    assert post("/v1/model_registrations/LLM", {"model": json.dumps(registration)}).status_code == 200
    launched = post("/v1/models", {"model_name": "responses-think", "model_engine": "transformers"})
    assert launched.status_code == 200, launched.text
    uid = launched.json()["model_uid"]
    yield uid
    httpx.delete(smollm2_server.url(f"/v1/models/{uid}"), timeout=120)
    httpx.delete(smollm2_server.url("/v1/model_registrations/LLM/responses-think"), timeout=60)


def test_thinking_goes_into_reasoning_items(smollm2_server: RunningServer, thinking_model: str) -> None:
    client = _client(smollm2_server)
    thinking = client.responses.create(model=thinking_model, input="why?", max_output_tokens=12, temperature=0,
                                       reasoning={"effort": "high"})
    reasoning = thinking.output[0]
    assert reasoning.type == "reasoning" and reasoning.content and reasoning.content[0].text
    assert thinking.usage is not None and thinking.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(model=thinking_model, input="why?", max_output_tokens=12, temperature=0,
                                 reasoning={"effort": "high"}) as stream:
        events = list(stream)
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == reasoning.content[0].text
    quiet = client.responses.create(model=thinking_model, input="why?", max_output_tokens=12, temperature=0,
                                    reasoning={"effort": "none"})
    assert [item.type for item in quiet.output] == ["message"] and quiet.output_text
    for reply in (thinking, quiet):
        assert "<think>" not in reply.model_dump_json() and "</think>" not in reply.model_dump_json()
