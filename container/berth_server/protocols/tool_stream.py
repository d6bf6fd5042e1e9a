"""Incremental tool-call parsing: model text in, content text / call starts / argument pieces out.

Each format is a Markup: where its calls begin in free text, a header pattern that ends where a
call's arguments begin (capturing the function name), a trailer after the arguments, and what may
follow (another call or the end of the call block). Patterns are matched with `regex`'s partial
matching, so the streamer knows at every character whether the text can still become a call
(hold it back) or cannot (send it as content). Arguments stream out as they arrive, piece by
piece, as OpenAI streams them; the JSON object's end is found by tracking braces and strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# How much text a possible call header may take before the streamer gives up and sends it as content.
MAX_HEADER_CHARS = 512


@dataclass(frozen=True)
class CallStart:
    """A call begins: its function name is known."""

    name: str


@dataclass(frozen=True)
class ArgsPiece:
    """The next piece of the current call's arguments (JSON text)."""

    text: str


@dataclass(frozen=True)
class CallEnd:
    """The current call's arguments are complete."""


Event = str | CallStart | ArgsPiece | CallEnd


@dataclass(frozen=True)
class Markup:
    """A tool-call format. `opener` is a literal that starts a call block in free text; None means
    calls are recognised only at the very start of the output (llama3_json, the JSON fallback)."""

    opener: str | None
    first: Any  # compiled regex: opener..header, ends where the arguments begin; group "name"
    trailer: Any  # compiled regex: after the arguments
    following: Any | None = None  # compiled regex: the next call's header in the same block (None: one call)
    end: Any | None = None  # compiled regex: closes the block (None: the output's end does)


def _name(match: Any) -> str:
    raw = next(value for key, value in match.groupdict().items() if key.startswith("name") and value is not None)
    try:
        return str(json.loads(f'"{raw}"'))
    except ValueError:
        return str(raw)


class _Args:
    """Finds the end of a JSON object (or a JSON string holding one) as text arrives."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.string_arg = False  # the arguments are a JSON string (some models encode them so)

    def scan(self, text: str) -> int:
        """How many chars of `text` belong to the arguments; -1 when all do and they go on."""
        for i, char in enumerate(text):
            if self.escape:
                self.escape = False
            elif self.in_string:
                if char == "\\":
                    self.escape = True
                elif char == '"':
                    self.in_string = False
                    if self.string_arg and self.depth == 0:
                        return i + 1
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return -1


class MarkupStreamer:
    """One choice's incremental parser for a Markup."""

    def __init__(self, markup: Markup) -> None:
        self.markup = markup
        self.buffer = ""
        self.state = "start" if markup.opener is None else "text"
        self.args: _Args | None = None
        self.pending_name: str | None = None
        self.header_text = ""  # the matched header, sent as content if no arguments follow it
        self.bare = False
        self.string_args = ""

    def feed(self, text: str, final: bool = False) -> list[Event]:
        """Consume a delta (final: no more text comes); return the events it completes."""
        self.buffer += text
        events: list[Event] = []
        while True:
            before = (self.state, len(self.buffer))
            getattr(self, f"_{self.state}")(events, final)
            if (self.state, len(self.buffer)) == before:
                break
        return _merge(events)

    def finish(self) -> list[Event]:
        """End of output: complete what can be, send the rest as content."""
        events = self.feed("", final=True)
        if self.state == "args" and self.args is not None and self.args.started:
            events.append(CallEnd())  # cut short (max_tokens): the call ends with what it has
        else:
            events.append((self.header_text if self.state == "args" else "") + self.buffer)
        self.buffer, self.state = "", "plain"
        return _merge(events)

    # -- states: each consumes from the buffer or waits for more -------------------------------------
    def _plain(self, events: list[Event], final: bool) -> None:
        if self.buffer:
            events.append(self.buffer)
            self.buffer = ""

    def _start(self, events: list[Event], final: bool) -> None:
        head = self.buffer.lstrip()
        if not head and not final:
            return
        self._header(self.markup.first, events, final, on_fail="plain")

    def _text(self, events: list[Event], final: bool) -> None:
        opener = self.markup.opener or ""
        at = self.buffer.find(opener)
        if at < 0:
            hold = 0 if final else _partial_suffix(self.buffer, opener)
            cut = len(self.buffer) - hold
            if cut:
                events.append(self.buffer[:cut])
                self.buffer = self.buffer[cut:]
            return
        if at:
            events.append(self.buffer[:at])
            self.buffer = self.buffer[at:]
        self.state = "opened"

    def _opened(self, events: list[Event], final: bool) -> None:
        self._header(self.markup.first, events, final, on_fail="skip_opener")

    def _header(self, pattern: Any, events: list[Event], final: bool, on_fail: str) -> None:
        match = pattern.match(self.buffer, partial=True)
        if match is not None and not match.partial:
            self.pending_name = _name(match)
            self.header_text = self.buffer[:match.end()]
            self.bare = match.groupdict().get("name2") is not None  # mistral v11: no trailer
            self.buffer = self.buffer[match.end():]
            self.state, self.args = "args", _Args()
            return
        if match is not None and not final and len(self.buffer) < MAX_HEADER_CHARS:
            return  # may still become a call
        if on_fail == "skip_opener":  # not a call after all: the opener is content, look past it
            size = len(self.markup.opener or "")
            events.append(self.buffer[:size])
            self.buffer = self.buffer[size:]
            self.state = "text"
        else:
            self.state = on_fail

    def _args(self, events: list[Event], final: bool) -> None:
        args = self.args
        assert args is not None
        if not args.started:
            stripped = self.buffer.lstrip()
            if not stripped:
                return
            if stripped[0] not in '{["':  # not arguments: what was held goes out as content
                if self.markup.opener is None:
                    self.buffer, self.state = self.header_text + self.buffer, "plain"
                else:  # the header starts with the opener: look for the next call after it
                    events.append(self.header_text)
                    self.state = "text"
                return
            self.buffer = stripped
            args.started = True
            args.string_arg = stripped[0] == '"'
            assert self.pending_name is not None
            events.append(CallStart(self.pending_name))
        end = args.scan(self.buffer)
        piece = self.buffer if end < 0 else self.buffer[:end]
        self.buffer = "" if end < 0 else self.buffer[end:]
        if args.string_arg:  # a JSON string holding the arguments: decode it once it is whole
            self.string_args += piece
            if end >= 0:
                events.append(ArgsPiece(_decoded(self.string_args)))
                self.string_args = ""
        elif piece:
            events.append(ArgsPiece(piece))
        if end >= 0:
            events.append(CallEnd())
            self.state = "trailer"

    def _trailer(self, events: list[Event], final: bool) -> None:
        match = None if self.bare else self.markup.trailer.match(self.buffer, partial=True)
        if match is not None and match.partial and not final:
            return
        if not self.bare and (match is None or match.partial):
            self.state = "plain" if self.markup.opener is None else "text"
            return
        if match is not None:
            self.buffer = self.buffer[match.end():]
        self.state = "between" if self.markup.following is not None else (
            "plain" if self.markup.opener is None else "text")

    def _between(self, events: list[Event], final: bool) -> None:
        end = None if self.markup.end is None else self.markup.end.match(self.buffer, partial=True)
        if end is not None and not end.partial:
            self.buffer = self.buffer[end.end():]
            self.state = "plain" if self.markup.opener is None else "text"
            return
        assert self.markup.following is not None
        follow = self.markup.following.match(self.buffer, partial=True)
        if follow is not None and not follow.partial:
            self._header(self.markup.following, events, final, on_fail="plain")
            return
        if (end is not None or follow is not None) and not final and len(self.buffer) < MAX_HEADER_CHARS:
            return
        self.state = "plain" if self.markup.opener is None else "text"


def _decoded(text: str) -> str:
    try:
        return str(json.loads(text))
    except ValueError:
        return text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (held back while streaming)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _merge(events: list[Event]) -> list[Event]:
    """Join adjacent content strings and argument pieces; drop empty content."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, str) and not event:
            continue
        if out and isinstance(event, str) and isinstance(out[-1], str):
            out[-1] = out[-1] + event
        elif out and isinstance(event, ArgsPiece) and isinstance(out[-1], ArgsPiece):
            out[-1] = ArgsPiece(out[-1].text + event.text)
        else:
            out.append(event)
    return out


class NamedStreamer:
    """The JSON fallback for a named tool_choice: the whole output is that function's arguments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = False

    def feed(self, text: str, final: bool = False) -> list[Event]:
        """Every piece is arguments; the first comes with the call's start."""
        events: list[Event] = []
        if not self.started and (text.strip() or final):
            self.started = True
            events.append(CallStart(self.name))
            text = text.lstrip()
        if self.started and text:
            events.append(ArgsPiece(text))
        return events

    def finish(self) -> list[Event]:
        """The call ends with the output."""
        return [*self.feed("", final=True), CallEnd()]
