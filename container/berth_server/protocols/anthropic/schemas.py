"""Anthropic Messages wire schemas (pydantic, no I/O); a request converts itself to the chat request it means.

The conversion targets the OpenAI chat-completion request, so a Messages request inherits what chat
completions do (chat template, tool_choice enforcement, stops, thinking switch, limits, adapters):
tool_use blocks become the assistant's tool_calls, tool_result blocks become tool messages, and
thinking blocks a client echoes back are accepted and dropped (the model is not shown them as text).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name, PositiveTokenCount, StopList, TopK
from berth_server.protocols.openai.schemas import ChatCompletionRequest
from berth_server.protocols.wire import parse


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


class Tool(AnthropicBase):
    """A client tool: name, description, input_schema (Anthropic's server tools are not run here)."""

    type: Literal["custom"] | None = None
    name: Name = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(f"tool type {kind!r} is not supported: Berth runs no server tools; give"
                             " client tools with an input_schema")
        return value

    def to_chat(self) -> dict[str, Any]:
        """The OpenAI function tool it is."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.input_schema}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


class ToolChoice(AnthropicBase):
    """auto, any (some tool must be called), tool (this one), none."""

    type: Literal["auto", "any", "tool", "none"]
    name: Name | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _tool_needs_a_name(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self

    def to_chat(self) -> Any:
        """OpenAI's tool_choice for it."""
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class Thinking(AnthropicBase):
    """{"type": "enabled", "budget_tokens"}, "disabled", "adaptive" (the model decides) or "between_tools" (off)."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: PositiveTokenCount | None = None

    @model_validator(mode="after")
    def _enabled_needs_a_budget(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking of type 'enabled' needs budget_tokens")
        return self


class OutputFormat(AnthropicBase):
    """output_config.format: {"type": "json_schema", "schema"} (Anthropic's structured outputs)."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    def to_chat(self) -> dict[str, Any]:
        """OpenAI's response_format for it (enforced while decoding, as chat completions enforce it)."""
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": self.schema_, "strict": True}}


class OutputConfig(AnthropicBase):
    """output_config: the output's format; effort is accepted and has no effect here."""

    effort: str | None = None
    format: OutputFormat | None = None


class ConversationFields(AnthropicBase):
    """What /v1/messages and /v1/messages/count_tokens share: the conversation and its tools."""

    model: Name
    messages: list[Message] = Field(min_length=1, max_length=bounds.MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=bounds.MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    def thinking_switch(self, model_reasons: bool) -> bool | None:
        """enable_thinking for the template: on when enabled; the template's default when adaptive or
        not asked; off when disabled (or between_tools) on a model that thinks (a model that never
        thinks has nothing to turn off, so it is asked nothing)."""
        if self.thinking is None or self.thinking.type == "adaptive":
            return None
        if self.thinking.type == "enabled":
            return True
        return False if model_reasons else None

    def turns_thinking_off(self) -> bool:
        """Whether this request asks for thinking off (the service then asks the model whether it thinks)."""
        return self.thinking is not None and self.thinking.type in ("disabled", "between_tools")

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation as chat messages (system first; tool results as tool messages)."""
        chat: list[dict[str, Any]] = []
        if self.system:
            chat.append({"role": "system", "content": _text_parts(self.system, "system")})
        for at, message in enumerate(self.messages):
            if message.role == "assistant":
                chat.append(_assistant(message, f"messages.{at}.content"))
            else:
                chat += _user(message, f"messages.{at}.content")
        return chat

    def to_chat(self, max_tokens: int | None = None, enable_thinking: bool | None = None,
                **sampling: Any) -> ChatCompletionRequest:
        """The chat-completion request this conversation is (validated as one, so its rules apply)."""
        body: dict[str, Any] = {"model": self.model, "messages": self.chat_messages(), "max_tokens": max_tokens,
                                "enable_thinking": enable_thinking, **sampling}
        if self.tools:
            body["tools"] = [tool.to_chat() for tool in self.tools]
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice.to_chat()
            body["parallel_tool_calls"] = not self.tool_choice.disable_parallel_tool_use
        if self.messages[-1].role == "assistant":  # a prefilled reply: the model continues it
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        return parse(ChatCompletionRequest, body)


class MessagesRequest(ConversationFields):
    """POST /v1/messages."""

    max_tokens: PositiveTokenCount
    stop_sequences: StopList | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: TopK | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = False
    service_tier: str | None = None
    output_config: OutputConfig | None = None

    @model_validator(mode="after")
    def _budget_below_max_tokens(self) -> MessagesRequest:
        budget = self.thinking.budget_tokens if self.thinking and self.thinking.type == "enabled" else None
        if budget is not None and budget >= self.max_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be greater than thinking.budget_tokens ({budget})")
        return self

    @property
    def thinking_budget(self) -> int | None:
        """The reasoning tokens after which the model process closes the thinking block (enabled only)."""
        return self.thinking.budget_tokens if self.thinking and self.thinking.type == "enabled" else None

    def to_chat_request(self, enable_thinking: bool | None, max_total_tokens: int | None = None) -> ChatCompletionRequest:
        """The chat-completion request this Messages request is, with its sampling, stops and output format.

        A max_tokens of at least the model's whole `max_total_tokens` becomes "as many as fit": Claude
        Code asks for a Claude model's output limit (32,000 and more) whatever the model, and such a
        request could never fit a smaller context. A max_tokens that could fit is honoured, and a
        prompt that leaves it no room is refused, as on every route.
        """
        output_format = self.output_config.format if self.output_config else None
        fits = max_total_tokens is None or self.max_tokens < max_total_tokens
        return self.to_chat(self.max_tokens if fits else None, enable_thinking, stop=self.stop_sequences,
                            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                            response_format=output_format.to_chat() if output_format else None)


class CountTokensRequest(ConversationFields):
    """POST /v1/messages/count_tokens."""


def _text_parts(content: str | list[Any], where: str) -> str | list[dict[str, str]]:
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


def _assistant(message: Message, where: str) -> dict[str, Any]:
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
    turn: dict[str, Any] = {"role": "assistant", "content": _text_parts(texts, where) if texts else ""}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _user(message: Message, where: str) -> list[dict[str, Any]]:
    """A user turn: each tool_result a tool message, each run of text (and refused images) a user message."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    run: list[Any] = []
    for at, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if run:
                out.append({"role": "user", "content": _text_parts(run, where)})
                run = []
            out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                        "content": _text_parts(block.content or "", f"{where}.{at}.content")})
        else:
            if block.type == "image":
                raise _image_refused(f"{where}.{at}")
            run.append(block)
    if run or not out:
        out.append({"role": "user", "content": _text_parts(run, where)})
    return out
