"""Forced tool calls on llama.cpp, on SmolLM2's own Q4_1 GGUF, through a real Berth server and the openai client.

tool_choice "required" and a named function are constraints that llama.cpp enforces with its own
grammars: with the hermes parser they are `<tool_call>` markup (a structural tag, written as a
llguidance grammar), without a parser vLLM's JSON forms (llama.cpp's json_schema). One server per
parser setting; every call's arguments must validate against the tool's parameters schema, and a
streamed reply must carry the same calls as the whole reply to the same greedy or seeded request.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import RunningServer, launch_serve

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed"),
              pytest.mark.timeout(900)]
UID = "smollm2-tools"
# A pattern, an enum, bounded integers and a nested object: the schema features a grammar must carry.
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 20},
                                                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                                                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "country", "unit"],
                                                "additionalProperties": False}}}
SMALL = {"type": "integer", "minimum": 0, "maximum": 999}  # unbounded integers let a small model write digits forever
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
    "type": "object", "properties": {"a": SMALL, "b": SMALL, "note": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": 12}}, "required": ["text"], "additionalProperties": False}},
    "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NAMED = {"type": "function", "function": {"name": "add"}}
# Greedy, then sampled with a seed: llama.cpp's sampler is seeded per request, so both repeat exactly.
SAMPLING: list[dict[str, Any]] = [{"temperature": 0}, {"temperature": 0.8, "seed": 5}]


@pytest.fixture(scope="module", params=["hermes", None], ids=["hermes", "no-parser"])
def server(request: pytest.FixtureRequest, smollm2_gguf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Berth on the GGUF file (llama.cpp), with the hermes tool-call parser or with none."""
    env = {"BERTH_MODEL_UID": UID, "MAX_TOTAL_TOKENS": "1024", "MAX_CONCURRENT_REQUESTS": "4"}
    if request.param is not None:
        env["BERTH_TOOL_CALL_PARSER"] = request.param
    running = launch_serve(smollm2_gguf, tmp_path_factory.mktemp("llamacpp-tools"), engine="llama.cpp", env=env)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def _ask(client: openai.OpenAI, user: str, tool_choice: Any, **kw: Any) -> Any:
    return client.chat.completions.create(model=UID, messages=[{"role": "user", "content": user}], tools=TOOLS,
                                          tool_choice=tool_choice, max_tokens=120, **kw)


def _whole(client: openai.OpenAI, user: str, tool_choice: Any, **kw: Any) -> tuple[list[tuple[str, str]], str]:
    """A non-streamed reply's calls as (name, arguments) and its finish_reason."""
    choice = _ask(client, user, tool_choice, **kw).choices[0]
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    return calls, str(choice.finish_reason)


def _streamed(client: openai.OpenAI, user: str, tool_choice: Any, **kw: Any) -> tuple[list[tuple[str, str]], str]:
    """A streamed reply's calls, reassembled from their deltas (a call's first delta names it), and its finish_reason."""
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in _ask(client, user, tool_choice, stream=True, **kw):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id:
                assert delta.index not in calls and delta.function and delta.function.name
                calls[delta.index] = [delta.function.name, ""]
            calls[delta.index][1] += (delta.function.arguments or "") if delta.function else ""
    return [(name, arguments) for name, arguments in (calls[i] for i in sorted(calls))], str(finish)


def _check(calls: list[tuple[str, str]], names: set[str]) -> None:
    assert len(calls) == 1, calls
    for name, arguments in calls:
        assert name in names
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "seeded"])
def test_required_tool_call_is_valid_streamed_and_whole(client: openai.OpenAI, sampling: dict[str, Any]) -> None:
    kw = {"parallel_tool_calls": False, **sampling}  # one call: SmolLM2 would otherwise repeat calls until max_tokens
    whole, finish = _whole(client, "What is the weather in Paris?", "required", **kw)
    assert finish == "tool_calls"
    _check(whole, {"get_weather", "add"})
    assert _streamed(client, "What is the weather in Paris?", "required", **kw) == (whole, finish)


@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "seeded"])
def test_named_tool_call_is_valid_streamed_and_whole(client: openai.OpenAI, sampling: dict[str, Any]) -> None:
    whole, finish = _whole(client, "Add two and three.", NAMED, **sampling)
    assert finish == "stop"
    _check(whole, {"add"})
    assert _streamed(client, "Add two and three.", NAMED, **sampling) == (whole, finish)


def test_a_pattern_in_the_parameters_holds(client: openai.OpenAI) -> None:
    """xgrammar prints a JSON-schema pattern as a Regex(...) macro GBNF has no syntax for; it must still bind."""
    whole, _ = _whole(client, "Weather in Lyon, in the country code fr?", {"type": "function", "function": {
        "name": "get_weather"}}, temperature=1.0, seed=3)
    _check(whole, {"get_weather"})
    assert len(json.loads(whole[0][1])["country"]) == 2


def test_responses_calls_equal_the_chat_calls(server: RunningServer, client: openai.OpenAI) -> None:
    """OpenAI Responses (/v1/responses) plans the same canonical request: on llama.cpp with the hermes parser,
    its forced call equals chat's, streamed (the typed events) and whole alike (once: the JSON form without a
    parser is the same code on the Responses side, and this machine's minutes are few)."""
    if "BERTH_TOOL_CALL_PARSER" not in server.env:
        pytest.skip("checked with the hermes parser")
    chat, _ = _whole(client, "What is the weather in Paris?", "required", parallel_tool_calls=False, temperature=0)
    tools: Any = [{"type": "function", **tool["function"]} for tool in TOOLS]
    kw: Any = {"model": UID, "input": "What is the weather in Paris?", "tools": tools, "tool_choice": "required",
               "parallel_tool_calls": False, "max_output_tokens": 120, "temperature": 0}
    whole = client.responses.create(**kw)
    assert whole.status == "completed"
    assert [(item.name, item.arguments) for item in whole.output if item.type == "function_call"] == chat
    with client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [(item.name, item.arguments) for item in final.output if item.type == "function_call"] == chat
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == chat[0][1] and events[-1].type == "response.completed"


def test_anthropic_tool_use_equals_the_chat_call(server: RunningServer, client: openai.OpenAI) -> None:
    """Anthropic Messages (/v1/messages) plans the same canonical request: on llama.cpp, its forced tool_use
    equals chat's forced call, whole and streamed (with the hermes parser, once, as for Responses)."""
    import anthropic

    if "BERTH_TOOL_CALL_PARSER" not in server.env:
        pytest.skip("checked with the hermes parser")
    chat, _ = _whole(client, "What is the weather in Paris?", "required", parallel_tool_calls=False, temperature=0)
    messages = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300).messages
    kw: Any = {"model": UID, "max_tokens": 120, "extra_body": {"temperature": 0},  # anthropic 2.x: not an argument
               "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [{"name": t["function"]["name"], "description": t["function"]["description"],
                          "input_schema": t["function"]["parameters"]} for t in TOOLS],
               "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    whole = messages.create(**kw)
    expected = [(name, json.loads(arguments)) for name, arguments in chat]
    assert whole.stop_reason == "tool_use"
    assert [(block.name, block.input) for block in whole.content if block.type == "tool_use"] == expected
    with messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert [(block.name, block.input) for block in final.content if block.type == "tool_use"] == expected
