"""Reasoning: split text between the model's reasoning tags from the answer, and the thinking switch.

The splitter sees text chunks in order and routes what lies between start and end tag to
`reasoning`, the rest to `text`; tags never leak into either, even when split across chunks, and
a block the chat template already opened in the prompt starts the stream inside reasoning.

Thinking switch: a request's `enable_thinking` (or chat_template_kwargs `enable_thinking` /
`thinking`) sets the model's `thinking_variable` (both common names when the spec names none).
Choice: asking to turn thinking OFF on a model whose chat template has no such variable is a
validation failure (a clear 4xx naming the model) rather than silently thinking anyway; turning it
ON where there is no switch is harmless and ignored.
"""

from __future__ import annotations

import re
from typing import Any

from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig

DEFAULT_THINKING_VARIABLES = ("enable_thinking", "thinking")


class ReasoningSplitter:
    """Streams text into (answer, reasoning) parts around start/end tags."""

    def __init__(self, start_tag: str, end_tag: str, in_reasoning: bool = False):
        self._tags = {False: start_tag, True: end_tag}  # the tag that ends the current section
        self._inside = in_reasoning
        self._held = ""
        self._strip = in_reasoning  # whitespace right after a tag is layout, not content
        self._start_tag = start_tag
        self._repeat_start = in_reasoning  # a model may re-emit the start tag its template already wrote

    @property
    def inside(self) -> bool:
        """Whether the text fed so far ends inside a reasoning block."""
        return self._inside

    @staticmethod
    def opened_in_prompt(prompt_text: str, start_tag: str, end_tag: str) -> bool:
        """True when the rendered prompt ends inside a reasoning block the template opened."""
        tail = prompt_text.rstrip()
        return tail.endswith(start_tag) and not tail.endswith(end_tag)

    def feed(self, chunk: str) -> tuple[str, str]:
        """Return (text, reasoning) that can be emitted for this chunk."""
        text: list[str] = []
        reasoning: list[str] = []
        buffer = self._held + chunk
        self._held = ""
        if self._repeat_start:
            head = buffer.lstrip()
            if head.startswith(self._start_tag):
                buffer, self._repeat_start = head[len(self._start_tag):], False
            elif self._start_tag.startswith(head):
                self._held = buffer  # could still become the start tag: wait
                return "", ""
            else:
                self._repeat_start = False
        while buffer:
            tag = self._tags[self._inside]
            at = buffer.find(tag)
            if at >= 0:
                self._emit(buffer[:at], text, reasoning)
                buffer = buffer[at + len(tag):]
                self._inside = not self._inside
                self._strip = True
                continue
            hold = _partial_suffix(buffer, tag)
            self._emit(buffer[:len(buffer) - hold], text, reasoning)
            self._held = buffer[len(buffer) - hold:]
            break
        return "".join(text), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        """At the end: release a held partial tag as ordinary text of its section."""
        self._repeat_start = False
        text: list[str] = []
        reasoning: list[str] = []
        self._emit(self._held, text, reasoning)
        self._held = ""
        return "".join(text), "".join(reasoning)

    def _emit(self, piece: str, text: list[str], reasoning: list[str]) -> None:
        if self._strip:
            piece = piece.lstrip()
            if not piece:
                return
            self._strip = False
        (reasoning if self._inside else text).append(piece)


def _partial_suffix(buffer: str, tag: str) -> int:
    """Length of the longest suffix of buffer that is a proper prefix of tag."""
    for size in range(min(len(tag) - 1, len(buffer)), 0, -1):
        if buffer.endswith(tag[:size]):
            return size
    return 0


def requested_thinking(enable_thinking: bool | None, template_kwargs: dict[str, Any],
                       config: ModelLaunchConfig) -> tuple[bool | None, bool]:
    """The thinking switch asked for: (value or None, whether the request set it explicitly)."""
    if enable_thinking is not None:
        return enable_thinking, True
    for name in (config.thinking_variable, *DEFAULT_THINKING_VARIABLES):
        if name and name in template_kwargs:
            return bool(template_kwargs[name]), True
    return config.default_enable_thinking, False


def template_has_variable(template: str | None, name: str) -> bool:
    """Whether a Jinja chat template refers to `name` (as a whole identifier)."""
    return bool(template) and re.search(rf"\b{re.escape(name)}\b", template or "") is not None


def thinking_kwargs(enable_thinking: bool | None, template_kwargs: dict[str, Any],
                    config: ModelLaunchConfig, template: str | None) -> dict[str, Any]:
    """Template kwargs with the thinking switch applied; InvalidRequest when it cannot be turned off."""
    value, explicit = requested_thinking(enable_thinking, template_kwargs, config)
    kwargs = dict(template_kwargs)
    if value is None:
        return kwargs
    names = (config.thinking_variable,) if config.thinking_variable else DEFAULT_THINKING_VARIABLES
    for name in names:
        kwargs[name] = value
    if explicit and not value and not any(template_has_variable(template, n) for n in names):
        raise InvalidRequest(
            f"model '{config.model_name}' cannot turn thinking off: its chat template has no thinking switch"
            f" ({' or '.join(names)})", param="enable_thinking")
    return kwargs
