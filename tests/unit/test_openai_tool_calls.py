"""Tool-call parsers (whole and streamed at every split) and the OpenAI replies that carry them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from berth_server.engines.engine_settings import VllmSettings
from berth_server.errors import InvalidRequest
from berth_server.http.app import create_app
from berth_server.launch_config import ModelDescription
from berth_server.models.launch_resolver import LaunchRequest, build_config, parse_launch
from berth_server.models.registry import Registry
from berth_server.protocols.tool_calls import (
    MARKUPS,
    TOOL_CALL_PARSERS,
    ChoiceToolStream,
    ToolCall,
    ToolCallParser,
)
from berth_server.protocols.tool_stream import ArgsPiece, CallStart
from berth_server.protocols.tool_syntax import ToolChoice
from berth_server.settings import Settings, SettingsError
from flask.testing import FlaskClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.unit.fakes.gateway import FakeControl, FakeGateway
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
DS = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n"
      "```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜>"
      "<｜tool▁calls▁end｜>")
MISTRAL_CASES = [
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "q": "}{\\""}}, {"name": "get_time", "arguments": {}}]',
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    "No calls [TOOL but text",
]
DEEPSEEK_CASES = [DS, "Sure. " + DS, "text only <｜tool"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def calls_of(calls: list[ToolCall]) -> list[tuple[str, Any]]:
    """Name and decoded arguments (ids are random)."""
    return [(call.name, json.loads(call.arguments)) for call in calls]


def streamed(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    """Feed pieces into a streamer and reassemble content and calls from its events, as a client does."""
    streamer = parser.streamer()
    events = [event for piece in pieces for event in streamer.feed(piece)] + streamer.finish()
    content, calls = "", []
    for event in events:
        if isinstance(event, str):
            content += event
        elif isinstance(event, CallStart):
            calls.append(ToolCall(event.name, ""))
        elif isinstance(event, ArgsPiece):
            calls[-1].arguments += event.text
    return content, calls


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


def test_llama3_mistral_deepseek_and_json_fallbacks_whole_output() -> None:
    content, calls = TOOL_CALL_PARSERS["llama3_json"].parse(LLAMA_CASES[1])
    assert content is None and calls_of(calls) == [("a", {}), ("b", {"x": [1]})]
    assert TOOL_CALL_PARSERS["llama3_json"].parse("  plain text answer") == ("plain text answer", [])
    content, calls = TOOL_CALL_PARSERS["mistral"].parse(MISTRAL_CASES[0])
    assert content is None and calls_of(calls) == [("get_weather", {"city": "Paris", "q": '}{"'}), ("get_time", {})]
    assert calls_of(TOOL_CALL_PARSERS["mistral"].parse(MISTRAL_CASES[1])[1]) == [("get_weather", {"city": "Paris"})]
    content, calls = TOOL_CALL_PARSERS["deepseek_v3"].parse("Sure. " + DS)
    assert content == "Sure." and calls_of(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    array = ToolCallParser(MARKUPS["json_array"]).parse('[{"name":"a","parameters":{"x":1}},{"name":"b","parameters":{}}]')
    assert calls_of(array[1]) == [("a", {"x": 1}), ("b", {})]
    assert calls_of(ToolCallParser(named="f").parse('{"x": [1, 2]}')[1]) == [("f", {"x": [1, 2]})]
    assert TOOL_CALL_PARSERS["hermes"].parse('<tool_call>{"name": "f", "arguments": {"a": 1') == (
        '<tool_call>{"name": "f", "arguments": {"a": 1', [])  # cut short: not a call


ALL_CASES = ([("hermes", t) for t in HERMES_CASES] + [("llama3_json", t) for t in LLAMA_CASES]
             + [("mistral", t) for t in MISTRAL_CASES] + [("deepseek_v3", t) for t in DEEPSEEK_CASES])


@pytest.mark.parametrize("name,text", ALL_CASES)
def test_streaming_equals_whole_at_every_split(name: str, text: str) -> None:
    parser = TOOL_CALL_PARSERS[name]
    content, calls = parser.parse(text)
    expected = (content or "", calls_of(calls))
    assert (streamed(parser, [text])[0].strip(), calls_of(streamed(parser, [text])[1])) == expected
    for cut in range(len(text) + 1):
        for pieces in ([text[:cut], text[cut:]], [text[:cut], text[cut:cut + 3], text[cut + 3:]]):
            out, got = streamed(parser, pieces)
            assert (out.strip(), calls_of(got)) == expected, cut
    out, got = streamed(parser, list(text))
    assert (out.strip(), calls_of(got)) == expected


@pytest.mark.parametrize("parser,text", [
    (ToolCallParser(MARKUPS["json_array"]), '[{"name": "a", "parameters": {"s": "]}"}}, {"name": "b", "parameters": {}}]'),
    (ToolCallParser(named="f"), '{"city": "Paris", "n": [1, {"x": "}"}]}'),
])
def test_json_fallbacks_stream_equal_whole_at_every_split(parser: ToolCallParser, text: str) -> None:
    expected = calls_of(parser.parse(text)[1])
    for cut in range(len(text) + 1):
        assert calls_of(streamed(parser, [text[:cut], text[cut:]])[1]) == expected, cut


def test_arguments_stream_in_pieces_after_a_first_delta_with_the_name() -> None:
    choice = ChoiceToolStream(TOOL_CALL_PARSERS["hermes"])
    # the possible tag prefix is held, and the whitespace before it (a call's markup may follow)
    assert choice.step("Sure <tool", last=False) == ("Sure", None)
    assert choice.step('_call>{"name": "f", "arguments": ', last=False) == ("", None)
    _, first = choice.step('{"a": ', last=False)
    assert first is not None and first[0]["index"] == 0 and first[0]["id"].startswith("call_")
    assert first[0]["type"] == "function" and first[0]["function"] == {"name": "f", "arguments": ""}
    assert first[1] == {"index": 0, "function": {"arguments": '{"a": '}}
    assert choice.step("1}", last=False) == ("", [{"index": 0, "function": {"arguments": "1}"}}])
    assert choice.step("}</tool_call> done", last=False) == (" done", None)
    _, second = choice.step('<tool_call>{"name": "g", "arguments": {}}</tool_call>', last=True)
    assert second is not None and [d["index"] for d in second] == [1, 1]
    assert choice.finish_reason("stop") == "tool_calls" and choice.finish_reason(None) is None
    assert ChoiceToolStream(TOOL_CALL_PARSERS["hermes"]).finish_reason("length") == "length"


def test_a_call_cut_by_max_tokens_keeps_length() -> None:
    cut = '<tool_call>{"name": "f", "arguments": {"city": "Ly'
    streamed = ChoiceToolStream(TOOL_CALL_PARSERS["hermes"], ToolChoice("required"))
    streamed.step(cut, last=True)
    assert streamed.count == 1 and streamed.finish_reason("length") == "length"
    whole = ChoiceToolStream(TOOL_CALL_PARSERS["hermes"], ToolChoice("required"))
    whole.step('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n<tool_call>{"na', last=True)
    assert whole.finish_reason("length") == "tool_calls"  # every call sent is whole; the cut one never began
    named = ChoiceToolStream(ToolCallParser(named="f"), ToolChoice("named", "f"))
    named.step('{"a": [1, ', last=True)
    assert named.finish_reason("length") == "length"


def test_parallel_tool_calls_false_keeps_the_first_call_only() -> None:
    choice = ChoiceToolStream(TOOL_CALL_PARSERS["hermes"], parallel=False)
    _, deltas = choice.step(WEATHER + TIME, last=True)
    assert {d["index"] for d in deltas or []} == {0} and deltas and deltas[0]["function"]["name"] == "get_weather"
    named = ChoiceToolStream(ToolCallParser(named="f"), ToolChoice("named", "f"))
    named.step("{}", last=True)
    assert named.finish_reason("stop") == "stop"


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
    starts = [d for d in deltas if d.id]
    assert [(d.index, d.type, d.function.name) for d in starts if d.function] == [
        (0, "function", "get_weather"), (1, "function", "get_time")]
    assert all(d.id and d.id.startswith("call_") for d in starts)
    for index, expected in enumerate([{"city": "Paris"}, {}]):
        pieces = [d.function.arguments or "" for d in deltas if d.index == index and d.function]
        assert json.loads("".join(pieces)) == expected
    assert not starts[0].function.arguments  # type: ignore[union-attr]  # the name comes first, then arguments
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
    own = VllmSettings.from_env({var: "hermes", "SM_VLLM_MAX_NUM_SEQS": "4"})
    assert settings.tool_call_parser == "hermes" and dict(own.args) == {"max_num_seqs": "4"}
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


def test_every_known_parser_name_has_a_parser() -> None:
    from berth_server import canonical

    assert set(TOOL_CALL_PARSERS) == set(canonical.TOOL_CALL_PARSERS)
    with pytest.raises(ValueError, match="use one of deepseek_v3, hermes"):
        canonical.check_parser_name("nope")
