"""Tool-call parsers (whole and streamed at every split) and the OpenAI replies that carry them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_server.errors import InvalidRequest
from berth_server.frontend.app import create_app
from berth_server.models.launch import ModelDescription
from berth_server.models.launch_resolver import LaunchRequest, build_config, parse_launch
from berth_server.models.registry import Registry
from berth_server.protocols.openai.tool_calls import TOOL_CALL_PARSERS, ChoiceToolStream, ToolCall
from berth_server.settings import Settings, SettingsError
from flask.testing import FlaskClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.unit.test_frontend_fake import FakeControl, FakeGateway
from tests.unit.test_openai_protocol import sse_payloads

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
HERMES_CASES = [
    "Just text, no calls.",
    WEATHER,
    f"Let me check.\n{WEATHER}\n{TIME}",
    f"{WEATHER} and after",
    "<tool_call>\n{not json}\n</tool_call> then text",  # malformed: stays content
    f"{TIME}<tool_call>{{\"name\": \"x\", \"arguments\":</tool_call>",  # one good, one malformed
    "text then <tool_call>\n{\"name\": \"cut",  # unclosed (max_tokens): stays content
    "a < b and <tool but not a tag",
    '<tool_call>{"arguments": {}}</tool_call>',  # no name: malformed
    '<tool_call>{"name": "s", "arguments": "{\\"q\\": 1}"}</tool_call>',  # arguments already a string
    "",
]
LLAMA_CASES = [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": [1]}}',
    "  plain text answer",
    '{"name": "broken", "parameters": ',
    "<|python_ta",
    "<|pyth and then text",
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def calls_of(calls: list[ToolCall]) -> list[tuple[str, Any]]:
    """Name and decoded arguments (ids are random)."""
    return [(call.name, json.loads(call.arguments)) for call in calls]


def streamed(name: str, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    """Feed pieces into a streamer, the last one with finish."""
    streamer = TOOL_CALL_PARSERS[name].streamer()
    out, calls = [], []
    for piece in pieces:
        text, new = streamer.feed(piece)
        out.append(text)
        calls.extend(new)
    text, new = streamer.finish()
    return "".join(out) + text, calls + new


# -- parsers ----------------------------------------------------------------------------------
def test_hermes_whole_output() -> None:
    content, calls = TOOL_CALL_PARSERS["hermes"].parse(f"Let me check.\n{WEATHER}\n{TIME}\n")
    assert content == "Let me check."
    assert calls_of(calls) == [("get_weather", {"city": "Paris", "unit": "°C"}), ("get_time", {})]
    assert json.loads(calls[0].arguments)["unit"] == "°C" and "°C" in calls[0].arguments  # not \u-escaped
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    assert TOOL_CALL_PARSERS["hermes"].parse(WEATHER)[0] is None


def test_hermes_malformed_and_unclosed_stay_content() -> None:
    parser = TOOL_CALL_PARSERS["hermes"]
    assert parser.parse("<tool_call>\n{not json}\n</tool_call> then text") == (
        "<tool_call>\n{not json}\n</tool_call> then text", [])
    content, calls = parser.parse(f"{TIME}<tool_call>{{\"name\": \"x\", \"arguments\":</tool_call>")
    assert content == '<tool_call>{"name": "x", "arguments":</tool_call>' and calls_of(calls) == [("get_time", {})]
    assert parser.parse('text <tool_call>{"name": "cut') == ('text <tool_call>{"name": "cut', [])


def test_llama3_json_whole_output() -> None:
    parser = TOOL_CALL_PARSERS["llama3_json"]
    content, calls = parser.parse(LLAMA_CASES[1])
    assert content is None and calls_of(calls) == [("a", {}), ("b", {"x": [1]})]
    assert parser.parse("  plain text answer") == ("plain text answer", [])
    assert parser.parse('{"name": "broken", "parameters": ') == ('{"name": "broken", "parameters":', [])


@pytest.mark.parametrize("name,text", [("hermes", t) for t in HERMES_CASES] + [("llama3_json", t) for t in LLAMA_CASES])
def test_streaming_equals_whole_at_every_split(name: str, text: str) -> None:
    content, calls = TOOL_CALL_PARSERS[name].parse(text)
    expected = (content or "", calls_of(calls))
    one_piece = streamed(name, [text])
    assert (one_piece[0].strip(), calls_of(one_piece[1])) == expected
    for cut in range(len(text) + 1):
        out, got = streamed(name, [text[:cut], text[cut:]])
        assert (out.strip(), calls_of(got)) == expected, cut
    chars = streamed(name, list(text))
    assert (chars[0].strip(), calls_of(chars[1])) == expected


def test_hermes_streams_text_before_a_call_at_once() -> None:
    streamer = TOOL_CALL_PARSERS["hermes"].streamer()
    assert streamer.feed("Sure <tool") == ("Sure ", [])  # only the possible tag prefix is held
    assert streamer.feed('_call>{"name": "f", "arguments": {"a": 1}}') == ("", [])
    text, calls = streamer.feed("</tool_call> done")
    assert text == " done" and calls_of(calls) == [("f", {"a": 1})]
    assert streamer.feed(" <tooltip>") == (" <tooltip>", [])


def test_choice_stream_indexes_calls_and_finishes_with_tool_calls() -> None:
    choice = ChoiceToolStream(TOOL_CALL_PARSERS["hermes"])
    assert choice.step("Hi ", last=False) == ("Hi ", None)
    text, deltas = choice.step(WEATHER + TIME, last=True)
    assert text == "" and [d["index"] for d in deltas or []] == [0, 1]
    assert choice.finish_reason("stop") == "tool_calls" and choice.finish_reason(None) is None
    assert ChoiceToolStream(TOOL_CALL_PARSERS["hermes"]).finish_reason("length") == "length"


# -- the OpenAI route -------------------------------------------------------------------------
class ToolGateway(FakeGateway):
    """A fake gateway whose model describes itself with a tool-call parser."""

    def __init__(self, words: list[str], parser: str | None = "hermes") -> None:
        super().__init__(words=words)
        self.parser = parser

    def describe(self, uid: str) -> ModelDescription:
        """A ready model with the configured parser."""
        return ModelDescription(uid=uid, model_name="tiny", model_type="LLM", source="demo://tiny",
                                engine="fake", device="cpu", dtype="float32", abilities=["chat", "tools"],
                                max_input_tokens=32, max_total_tokens=64, context_length=64, max_batch_size=1,
                                pid=1, tool_call_parser=self.parser)


WORDS = ["I will check.", "\n<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
         "\n</tool_call>", "\n<tool_call>\n", '{"name": "get_time", "arguments": {}}\n</tool_call>']


def client_for(tmp_path, gateway: FakeGateway) -> FlaskClient:
    """A test client on the given gateway."""
    return create_app(Settings(runtime_dir=tmp_path), gateway=gateway, control=FakeControl()).test_client()


def chat(client: FlaskClient, **extra: Any) -> Any:
    """POST a chat completion offering TOOLS."""
    body = {"model": "default", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS, **extra}
    return client.post("/v1/chat/completions", json=body)


def test_non_streaming_reply_has_tool_calls(tmp_path) -> None:
    reply = chat(client_for(tmp_path, ToolGateway(WORDS)))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    completion = ChatCompletion.model_validate(reply.get_json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "I will check."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)


@pytest.mark.parametrize("extra,parser", [({"tool_choice": "none"}, "hermes"), ({}, None), ({"tools": None}, "hermes")])
def test_tool_calls_stay_text_when_not_asked_or_no_parser(tmp_path, extra: dict[str, Any], parser: str | None) -> None:
    reply = chat(client_for(tmp_path, ToolGateway(WORDS, parser)), **extra).get_json()
    assert reply["choices"][0]["message"]["content"] == "".join(WORDS)
    assert reply["choices"][0]["message"]["tool_calls"] is None and reply["choices"][0]["finish_reason"] == "length"


def test_streaming_chunks_carry_tool_call_deltas(tmp_path) -> None:
    reply = chat(client_for(tmp_path, ToolGateway(WORDS)), stream=True)
    events = sse_payloads(reply.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(event) for event in events[:-1]]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip() == "I will check." and "tool_call" not in content
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.type, d.function.name) for d in deltas if d.function] == [
        (0, "function", "get_weather"), (1, "function", "get_time")]
    assert json.loads(deltas[0].function.arguments or "") == {"city": "Paris"}  # type: ignore[union-attr]
    assert all(d.id and d.id.startswith("call_") for d in deltas)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_streaming_without_calls_keeps_finish_reason(tmp_path) -> None:
    events = sse_payloads(chat(client_for(tmp_path, ToolGateway(["a <b", " c"])), stream=True).get_data(as_text=True))
    chunks = [ChatCompletionChunk.model_validate(event) for event in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a <b c"
    assert chunks[-1].choices[0].finish_reason == "length"


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("var", ["BERTH_TOOL_CALL_PARSER", "BERTH_VLLM_TOOL_CALL_PARSER", "SM_VLLM_TOOL_CALL_PARSER"])
def test_settings_read_the_parser_and_keep_it_out_of_vllm_args(var: str) -> None:
    settings = Settings.from_env({var: "hermes", "SM_VLLM_MAX_NUM_SEQS": "4"})
    assert settings.tool_call_parser == "hermes" and dict(settings.vllm_args) == {"max_num_seqs": "4"}
    assert Settings.from_env(settings.to_env()).tool_call_parser == "hermes"
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: "nope"})


def test_berth_name_wins_and_default_is_none() -> None:
    env = {"BERTH_TOOL_CALL_PARSER": "llama3_json", "SM_VLLM_TOOL_CALL_PARSER": "hermes"}
    assert Settings.from_env(env).tool_call_parser == "llama3_json"
    assert Settings.from_env({}).tool_call_parser is None


def test_launch_takes_the_family_parser_or_the_body_key(tmp_path) -> None:
    registration = Registry(None).get("LLM", "qwen2.5-instruct").registration
    settings = Settings(runtime_dir=tmp_path)
    config = build_config(settings, registration, "LLM", LaunchRequest(model_name="qwen2.5-instruct"), "u")
    assert config.tool_call_parser == "hermes"
    request = parse_launch({"model_name": "qwen2.5-instruct", "tool_call_parser": "llama3_json"})
    assert request.engine_args == {}
    assert build_config(settings, registration, "LLM", request, "u").tool_call_parser == "llama3_json"
    with pytest.raises(InvalidRequest, match="tool call parser") as raised:
        build_config(settings, registration, "LLM", LaunchRequest(model_name="qwen2.5-instruct",
                                                                  tool_call_parser="nope"), "u")
    assert raised.value.status == 400


def test_default_model_gets_the_catalog_parser_unless_set(tmp_path) -> None:
    from berth_server.launcher import default_model_config

    settings = Settings(runtime_dir=tmp_path, hf_model_id="Qwen/Qwen3-0.6B")
    assert default_model_config(settings).tool_call_parser == "hermes"
    chosen = settings.replace(tool_call_parser="llama3_json")
    assert default_model_config(chosen).tool_call_parser == "llama3_json"
    assert default_model_config(settings.replace(hf_model_id="demo://tiny")).tool_call_parser is None
