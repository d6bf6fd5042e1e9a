"""Anthropic Messages content blocks and messages (pydantic, no I/O), and the chat messages they become.

tool_use blocks become the assistant's tool_calls, tool_result blocks tool messages; thinking blocks a
client echoes back are accepted and dropped (the model is not shown them as text); image blocks are
refused on these text models.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name


class AnthropicBase(BaseModel):
    """Every Anthropic schema: unknown keys are ignored (cache_control, citations, betas' additions)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextBlock(AnthropicBase):
    """{"type": "text", "text"}."""

    type: Literal["text"]
    text: str


class ImageBlock(AnthropicBase):
    """{"type": "image", "source"}: parsed so that it can be refused by name (no model here sees images)."""

    type: Literal["image"]
    source: dict[str, Any] = {}


class ToolUseBlock(AnthropicBase):
    """An assistant's call: {"type": "tool_use", "id", "name", "input"}."""

    type: Literal["tool_use"]
    id: Name
    name: Name
    input: dict[str, Any] = {}


class ToolResultBlock(AnthropicBase):
    """A call's result in a user turn: content as a string or text blocks."""

    type: Literal["tool_result"]
    tool_use_id: Name
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None


class ThinkingBlock(AnthropicBase):
    """Thinking a client echoes back (Claude Code sends it with an empty signature)."""

    type: Literal["thinking"]
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(AnthropicBase):
    """Redacted thinking a client echoes back."""

    type: Literal["redacted_thinking"]
    data: str = ""


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                  Field(discriminator="type")]
# Which blocks each role may carry (as Anthropic's API allows them).
_ROLE_BLOCKS = {"user": ("text", "image", "tool_result"),
                "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}


class Message(AnthropicBase):
    """One turn: content as a string or a list of blocks."""

    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(max_length=bounds.MAX_MESSAGES)]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> Message:
        for block in self.content if isinstance(self.content, list) else ():
            if block.type not in _ROLE_BLOCKS[self.role]:
                raise ValueError(f"a '{block.type}' block cannot be in a '{self.role}' message")
        return self


def text_parts(content: str | list[Any], where: str) -> str | list[dict[str, str]]:
    """A string, or text blocks as chat text parts (joined as chat completions join them)."""
    if isinstance(content, str):
        return content
    parts = []
    for at, block in enumerate(content):
        if block.type == "image":
            raise _image_refused(f"{where}.{at}")
        parts.append({"type": "text", "text": block.text})
    return parts


def _image_refused(where: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: image blocks need a vision model; the models Berth serves read text only",
                          param=where)


def assistant_message(message: Message, where: str) -> dict[str, Any]:
    """An assistant turn: its text, and its tool_use blocks as tool_calls; thinking is dropped.

    A turn of calls alone has content "" rather than null: templates without tool support (SmolLM2's)
    concatenate the content and fail on null, and those with it render "" as no text.
    """
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts = [block for block in message.content if block.type == "text"]
    calls = [{"id": block.id, "type": "function",
              "function": {"name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}}
             for block in message.content if isinstance(block, ToolUseBlock)]
    turn: dict[str, Any] = {"role": "assistant", "content": text_parts(texts, where) if texts else ""}
    if calls:
        turn["tool_calls"] = calls
    return turn


def user_messages(message: Message, where: str) -> list[dict[str, Any]]:
    """A user turn: each tool_result a tool message, each run of text (and refused images) a user message."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    run: list[Any] = []
    for at, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if run:
                out.append({"role": "user", "content": text_parts(run, where)})
                run = []
            out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                        "content": text_parts(block.content or "", f"{where}.{at}.content")})
        else:
            if block.type == "image":
                raise _image_refused(f"{where}.{at}")
            run.append(block)
    if run or not out:
        out.append({"role": "user", "content": text_parts(run, where)})
    return out
