"""Tool-call parsers (pure text): the model's tool-call markup -> OpenAI tool_calls, whole or streamed."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCall:
    """One parsed call; `arguments` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_message(self) -> dict[str, Any]:
        """The entry of a non-streaming message.tool_calls."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def to_delta(self, index: int) -> dict[str, Any]:
        """The entry of a streaming delta.tool_calls (the whole call in one chunk)."""
        return {"index": index, **self.to_message()}


def _call(data: Any, arguments_key: str = "arguments") -> ToolCall | None:
    """A ToolCall from decoded JSON, or None when it is not {"name": str, "arguments": ...}."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get(arguments_key, data.get("arguments", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(name=data["name"], arguments=arguments)


class Streamer(Protocol):
    """Incremental parser: feed content deltas, get (content to stream now, completed calls)."""

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Consume a delta."""
        ...

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of output: flush whatever is held back."""
        ...


class ToolCallParser(Protocol):
    """A named tool-call format."""

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """Whole output -> (remaining content stripped, or None; calls)."""
        ...

    def streamer(self) -> Streamer:
        """A fresh incremental parser for one choice."""
        ...


# -- hermes (Qwen2.5, Qwen3, QwQ, Hermes): <tool_call>{json}</tool_call> ---------------------------
START, END = "<tool_call>", "</tool_call>"
_HERMES_RE = re.compile(re.escape(START) + r"(.*?)" + re.escape(END), re.DOTALL)


def _hermes_block(inner: str) -> ToolCall | None:
    try:
        return _call(json.loads(inner))
    except ValueError:
        return None


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (held back while streaming)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class HermesParser:
    """Hermes-style calls; a block whose JSON is malformed stays in the content."""

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """Whole output -> (remaining content stripped, or None; calls)."""
        calls: list[ToolCall] = []
        kept: list[str] = []
        position = 0
        for match in _HERMES_RE.finditer(text):
            call = _hermes_block(match.group(1))
            kept.append(text[position:match.start()] if call else text[position:match.end()])
            position = match.end()
            if call:
                calls.append(call)
        kept.append(text[position:])
        content = "".join(kept).strip()
        return content or None, calls

    def streamer(self) -> HermesStreamer:
        """A fresh incremental parser."""
        return HermesStreamer()


class HermesStreamer:
    """Text outside calls streams at once (bar a possible partial `<tool_call`); calls are buffered."""

    def __init__(self) -> None:
        self.buffer = ""
        self.inside = False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Consume a delta."""
        self.buffer += text
        out: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if self.inside:
                end = self.buffer.find(END)
                if end < 0:
                    break
                block, self.buffer = self.buffer[:end + len(END)], self.buffer[end + len(END):]
                self.inside = False
                call = _hermes_block(block[len(START):-len(END)])
                if call:
                    calls.append(call)
                else:
                    out.append(block)
                continue
            start = self.buffer.find(START)
            if start < 0:
                hold = _partial_suffix(self.buffer, START)
                out.append(self.buffer[:len(self.buffer) - hold])
                self.buffer = self.buffer[len(self.buffer) - hold:]
                break
            out.append(self.buffer[:start])
            self.buffer = self.buffer[start:]
            self.inside = True
        return "".join(out), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """An unclosed call (or a partial tag) goes out as content."""
        rest, self.buffer, self.inside = self.buffer, "", False
        return rest, []


# -- llama3_json (Llama 3.1+): the whole output is {"name", "parameters"} objects, ';'-separated --
PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser:
    """Llama 3 JSON calls: only when the output starts with '{' (or <|python_tag|>) and is all calls."""

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """Whole output -> (remaining content stripped, or None; calls)."""
        stripped = text.strip()
        body = stripped.removeprefix(PYTHON_TAG).strip()
        if not body.startswith("{"):
            return stripped or None, []
        decoder, calls, position = json.JSONDecoder(), [], 0
        while position < len(body):
            try:
                data, position = decoder.raw_decode(body, position)
            except ValueError:
                return stripped, []
            call = _call(data, "parameters")
            if call is None:
                return stripped, []
            calls.append(call)
            while position < len(body) and (body[position].isspace() or body[position] == ";"):
                position += 1
        return None, calls

    def streamer(self) -> Llama3JsonStreamer:
        """A fresh incremental parser."""
        return Llama3JsonStreamer(self)


class Llama3JsonStreamer:
    """Holds the start until it is known to be JSON (then buffers all) or text (then streams)."""

    def __init__(self, parser: Llama3JsonParser) -> None:
        self.parser = parser
        self.buffer = ""
        self.mode: str | None = None  # None: undecided; "json"; "text"

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Consume a delta."""
        if self.mode == "text":
            return text, []
        self.buffer += text
        if self.mode is None:
            head = self.buffer.lstrip()
            if head.startswith(("{", PYTHON_TAG)):
                self.mode = "json"
            elif head and not PYTHON_TAG.startswith(head):
                self.mode = "text"
                out, self.buffer = self.buffer, ""
                return out, []
        return "", []

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Parse the buffered JSON; text that does not parse goes out as content."""
        rest, self.buffer = self.buffer, ""
        if self.mode != "json":
            return rest, []
        content, calls = self.parser.parse(rest)
        return content or "", calls


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {"hermes": HermesParser(), "llama3_json": Llama3JsonParser()}


def check_parser_name(name: str | None) -> str | None:
    """`name` if it is a known parser (or None); ValueError listing the known ones otherwise."""
    if name is not None and name not in TOOL_CALL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; use one of {', '.join(sorted(TOOL_CALL_PARSERS))}")
    return name


# -- glue for the OpenAI service ---------------------------------------------------------------
def parser_for(gateway: Any, uid: str, tools: list[Any] | None, tool_choice: Any) -> ToolCallParser | None:
    """The model's parser when this request offers tools and allows calling them."""
    if not tools or tool_choice == "none":
        return None
    name = getattr(gateway.describe(uid), "tool_call_parser", None)
    return TOOL_CALL_PARSERS.get(name) if name else None


def fold_message(parser: ToolCallParser | None, message: dict[str, Any],
                 finish_reason: str) -> tuple[dict[str, Any], str]:
    """Move the calls out of a non-streaming message's content; finish_reason becomes tool_calls."""
    if parser is None or not message.get("content"):
        return message, finish_reason
    content, calls = parser.parse(message["content"])
    if not calls:
        return message, finish_reason
    message = {**message, "content": content, "tool_calls": [call.to_message() for call in calls]}
    return message, "tool_calls"


class ChoiceToolStream:
    """One streamed choice's tool-call state: content to send now, call deltas, the final finish_reason."""

    def __init__(self, parser: ToolCallParser) -> None:
        self.streamer = parser.streamer()
        self.count = 0

    def step(self, text: str, last: bool) -> tuple[str, list[dict[str, Any]] | None]:
        """Feed one delta's text (`last`: it carries the finish_reason)."""
        out, calls = self.streamer.feed(text)
        if last:
            tail, more = self.streamer.finish()
            out, calls = out + tail, calls + more
        deltas = [call.to_delta(self.count + i) for i, call in enumerate(calls)]
        self.count += len(deltas)
        return out, deltas or None

    def finish_reason(self, reason: str | None) -> str | None:
        """tool_calls once any call was sent."""
        return "tool_calls" if reason is not None and self.count else reason
