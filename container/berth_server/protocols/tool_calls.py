"""Tool-call parsers (pure text): the model's call markup -> tool calls, whole or streamed (every wire's).

Formats: hermes (Qwen2.5/Qwen3/QwQ/Hermes), llama3_json (Llama 3.x), mistral (`[TOOL_CALLS][...]`
and the v11 `[TOOL_CALLS]name[ARGS]{...}`), deepseek_v3 (DeepSeek V3 / R1 markup), plus the JSON
forms a forced tool_choice uses when the model has no parser. Streaming follows OpenAI: a call's
first delta carries index, id, type and function.name; its arguments then stream in pieces.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import regex

from berth_server.canonical import SamplingParams
from berth_server.protocols.tool_stream import (
    ArgsPiece,
    CallEnd,
    CallStart,
    Event,
    Markup,
    MarkupStreamer,
    NamedStreamer,
)
from berth_server.protocols.tool_syntax import (
    DS_CALL_BEGIN,
    DS_CALL_END,
    DS_CALLS_BEGIN,
    DS_CALLS_END,
    DS_SEP,
    MISTRAL_CALLS,
    ToolChoice,
)

_NAME = r'"(?P<name>(?:[^"\\]|\\.)*)"'


def _json_call(prefix: str, keys: str) -> str:
    """`prefix {"name": "<name>", "<keys>": ` as a pattern ending where the arguments begin."""
    return prefix + r'\s*\{\s*"name"\s*:\s*' + _NAME + r'\s*,\s*"(?:' + keys + r')"\s*:'


def _compile(pattern: str) -> Any:
    return regex.compile(pattern, regex.DOTALL)


_DS_HEADER = (regex.escape(DS_CALL_BEGIN) + r"\s*(?:function)?\s*" + regex.escape(DS_SEP)
              + r"(?P<name>[^\n`]+?)\s*\n```(?:json)?\s*\n")
MARKUPS: dict[str, Markup] = {
    "hermes": Markup("<tool_call>", _compile(_json_call(r"<tool_call>\s*", "arguments|parameters")),
                     _compile(r"\s*\}\s*</tool_call>")),
    "llama3_json": Markup(None, _compile(_json_call(r"\s*(?:<\|python_tag\|>)?\s*", "parameters|arguments")),
                          _compile(r"\s*\}"), _compile(_json_call(r"\s*;?\s*", "parameters|arguments"))),
    "mistral": Markup(MISTRAL_CALLS,
                      _compile(_json_call(regex.escape(MISTRAL_CALLS) + r"\s*\[?\s*", "arguments")
                               + "|" + regex.escape(MISTRAL_CALLS) + r"(?P<name2>[^\[\]{}\s]+)\[ARGS\]"),
                      _compile(r"\s*\}"),
                      _compile(_json_call(r"\s*,\s*", "arguments") + "|" + regex.escape(MISTRAL_CALLS)
                               + r"(?P<name2>[^\[\]{}\s]+)\[ARGS\]"),
                      _compile(r"\s*\]")),
    "deepseek_v3": Markup(DS_CALLS_BEGIN, _compile(regex.escape(DS_CALLS_BEGIN) + r"\s*" + _DS_HEADER),
                          _compile(r"\s*```\s*" + regex.escape(DS_CALL_END)),
                          _compile(r"\s*" + _DS_HEADER), _compile(r"\s*" + regex.escape(DS_CALLS_END))),
    # tool_choice "required" without a parser: [{"name": ..., "parameters": {...}}, ...]
    "json_array": Markup(None, _compile(_json_call(r"\s*\[", "parameters")), _compile(r"\s*\}"),
                         _compile(_json_call(r"\s*,", "parameters")), _compile(r"\s*\]")),
}


@dataclass
class ToolCall:
    """One parsed call; `arguments` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_message(self) -> dict[str, Any]:
        """The entry of a non-streaming message.tool_calls."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallParser:
    """A named format: whole outputs and per-choice streamers."""

    def __init__(self, markup: Markup | None = None, named: str | None = None) -> None:
        self.markup = markup
        self.named = named  # the JSON fallback of a named tool_choice: the output is the arguments

    def streamer(self) -> MarkupStreamer | NamedStreamer:
        """A fresh incremental parser for one choice."""
        if self.markup is None:
            return NamedStreamer(self.named or "")
        return MarkupStreamer(self.markup)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """A whole output through this format's streamer -> (content stripped, or None; calls).

        Replies never use it (a whole reply folds the streamed chunks); it checks the markup streamers
        on whole texts. Unusable calls leave it all content.
        """
        streamer = self.streamer()
        content, calls = _collect([*streamer.feed(text), *streamer.finish()])
        if any(not _is_json(call.arguments) for call in calls):
            return text.strip() or None, []
        return content.strip() or None, calls


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _collect(events: list[Event]) -> tuple[str, list[ToolCall]]:
    content: list[str] = []
    calls: list[ToolCall] = []
    for event in events:
        if isinstance(event, str):
            content.append(event)
        elif isinstance(event, CallStart):
            calls.append(ToolCall(name=event.name, arguments=""))
        elif isinstance(event, ArgsPiece) and calls:
            calls[-1].arguments += event.text
    for call in calls:
        call.arguments = call.arguments.strip() or "{}"
    return "".join(content), calls


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {
    name: ToolCallParser(markup) for name, markup in MARKUPS.items() if name != "json_array"
}


# -- glue for the services ---------------------------------------------------------------------
def parser_name(gateway: Any, uid: str) -> str | None:
    """The model's configured tool-call parser, if any."""
    name = getattr(gateway.describe(uid), "tool_call_parser", None)
    return name if name in TOOL_CALL_PARSERS else None


def keeping_special_tokens(sampling: SamplingParams, parser: str | None, choice: ToolChoice) -> SamplingParams:
    """`sampling`, keeping special tokens in the text where the parser needs them: mistral's and deepseek_v3's
    markers are special tokens in their models' tokenizers, so decoding must not drop them while calls may come."""
    if parser in ("mistral", "deepseek_v3") and choice.mode != "none":
        return msgspec.structs.replace(sampling, skip_special_tokens=False)
    return sampling


def parser_for(name: str | None, choice: ToolChoice) -> ToolCallParser | None:
    """How to read this request's output: the model's parser, or the JSON fallback of a forced choice."""
    if choice.mode == "none":
        return None
    if name is not None:
        return TOOL_CALL_PARSERS[name]
    if choice.mode == "named":
        return ToolCallParser(named=choice.name)
    if choice.mode == "required":
        return ToolCallParser(MARKUPS["json_array"])
    return None


def _finish(reason: str, choice: ToolChoice) -> str:
    """OpenAI: "stop" after a named tool_choice, "tool_calls" after required or auto calls."""
    if reason in ("abort", "error"):
        return reason
    return "stop" if choice.mode == "named" else "tool_calls"


class ChoiceToolStream:
    """One streamed choice: content to send now, OpenAI tool-call deltas, the final finish_reason."""

    def __init__(self, parser: ToolCallParser, choice: ToolChoice | None = None, parallel: bool = True) -> None:
        self.streamer = parser.streamer()
        self.choice = choice or ToolChoice("auto")
        self.parallel = parallel
        self.count = 0  # calls started
        self.closed = 0  # calls finished
        self.call_id = ""
        self.arguments = ""  # the last sent call's arguments so far
        self.held = ""  # trailing whitespace of the content so far: dropped if a call follows it
        self.sent_content = False

    def step(self, text: str, last: bool) -> tuple[str, list[dict[str, Any]] | None]:
        """Feed one delta's text (`last`: it carries the finish_reason)."""
        events = self.streamer.feed(text)
        if last:
            events += self.streamer.finish()
        out: list[str] = []
        deltas: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, str):
                out.append(self._content(event))
            elif not self.parallel and (self.closed or (self.count and isinstance(event, CallStart))):
                continue  # parallel_tool_calls false: only the first call
            elif isinstance(event, CallStart):
                self.held = ""  # the whitespace between text and a call is the markup's, not content
                self.call_id = f"call_{uuid.uuid4().hex[:24]}"
                deltas.append({"index": self.count, "id": self.call_id, "type": "function",
                               "function": {"name": event.name, "arguments": ""}})
                self.count += 1
                self.arguments = ""
            elif isinstance(event, ArgsPiece):
                deltas.append({"index": self.count - 1, "function": {"arguments": event.text}})
                self.arguments += event.text
            elif isinstance(event, CallEnd):
                self.closed += 1
        if last and not self.count:
            out.append(self.held)  # no call came: the text keeps its own trailing whitespace
        return "".join(out), deltas or None

    def _content(self, text: str) -> str:
        """Content to send now: trailing whitespace waits (a call may follow it), and content that
        starts after a call starts without the whitespace the markup left, so the content is trimmed
        at both ends as a reply with calls should be, streamed or whole."""
        text = self.held + text
        kept = text.rstrip()
        self.held = text[len(kept):]
        if self.count and not self.sent_content:
            kept = kept.lstrip()
        self.sent_content = self.sent_content or bool(kept)
        return kept

    def finish_reason(self, reason: str | None) -> str | None:
        """tool_calls once any call was sent (stop for a named tool_choice).

        A call cut mid-arguments by max_tokens keeps "length", as the whole reply does (it leaves
        such a reply as text): a client that saw "tool_calls" would run the broken call.
        """
        if reason is None or not self.count:
            return reason
        if reason == "length" and not _is_json(self.arguments.strip() or "{}"):
            return reason
        return _finish(reason, self.choice)


class WholeCallStream:
    """One streamed choice for wires that send each call whole (Ollama): content now, each call once complete.

    Wraps ChoiceToolStream (the same parsing and whitespace rules as OpenAI's streamed calls); a call
    is given when its arguments close, as {"index", "name", "arguments"} with the arguments parsed to an object.
    A call cut off before its arguments close, or whose arguments are not a JSON object, is not given.
    """

    def __init__(self, parser: ToolCallParser) -> None:
        self.inner = ChoiceToolStream(parser)
        self.calls: list[dict[str, str]] = []
        self.checked = 0  # calls whose arguments closed
        self.given = 0  # of those, the usable ones given

    def step(self, text: str, last: bool) -> tuple[str, list[dict[str, Any]]]:
        """Feed one delta's text (`last`: it carries the finish_reason) -> (content, calls completed now)."""
        content, deltas = self.inner.step(text, last)
        for delta in deltas or []:
            if "id" in delta:
                self.calls.append({"name": delta["function"]["name"], "arguments": ""})
            else:
                self.calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
        complete = []
        while self.checked < min(self.inner.closed, len(self.calls)):
            call = self.calls[self.checked]
            self.checked += 1
            try:
                arguments = json.loads(call["arguments"].strip() or "{}")
            except ValueError:
                continue
            if isinstance(arguments, dict):
                complete.append({"index": self.given, "name": call["name"], "arguments": arguments})
                self.given += 1
        return content, complete
