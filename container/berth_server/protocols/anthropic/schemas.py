"""Anthropic Messages wire schemas (pydantic, no I/O); a request converts itself to the chat request it means.

The conversion targets the OpenAI chat-completion request, so a Messages request inherits what chat
completions do (chat template, tool_choice enforcement, stops, thinking switch, limits, adapters):
the blocks of its messages become chat messages as blocks.py says (tool_use a tool call, tool_result a
tool message, echoed thinking dropped).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from berth_server.protocols import bounds
from berth_server.protocols.anthropic.blocks import (
    AnthropicBase,
    Message,
    TextBlock,
    assistant_message,
    text_parts,
    user_messages,
)
from berth_server.protocols.bounds import Name, PositiveTokenCount, StopList, TopK
from berth_server.protocols.openai.schemas import ChatCompletionRequest
from berth_server.protocols.wire import parse


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
            chat.append({"role": "system", "content": text_parts(self.system, "system")})
        for at, message in enumerate(self.messages):
            if message.role == "assistant":
                chat.append(assistant_message(message, f"messages.{at}.content"))
            else:
                chat += user_messages(message, f"messages.{at}.content")
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
