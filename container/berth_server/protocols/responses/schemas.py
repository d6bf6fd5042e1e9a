"""OpenAI Responses wire schemas (pydantic, no I/O): input items, tools and text.format become one chat request.

A Responses request is a chat request in other clothes: its input items become chat messages (a
`function_call` an assistant tool call, a `function_call_output` a tool message, a `reasoning` item the
next assistant message's reasoning_content), its flat function tools the chat tools, `text.format` the
response_format, `reasoning.effort` the template's thinking switch. The chat request then builds the
canonical request as /v1/chat/completions does (protocols/openai), so tool_choice enforcement,
constraints and reasoning behave the same on both routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name, PositiveTokenCount
from berth_server.protocols.openai.schemas import ChatCompletionRequest
from berth_server.protocols.responses.items import (
    INCLUDABLE,
    ITEM_TYPES,
    LOGPROBS,
    InputItem,
    MessageItem,
    ResponsesBase,
    chat_messages,
    item_record,
    message_record,
)
from berth_server.protocols.wire import parse


class FunctionTool(ResponsesBase):
    """A function tool, flat as Responses writes it."""

    type: Literal["function"]
    name: Name = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(ResponsesBase):
    """tool_choice naming one function."""

    type: Literal["function"]
    name: Name = Field(min_length=1)


class FormatText(ResponsesBase):
    """Plain text output."""

    type: Literal["text"]


class FormatJsonObject(ResponsesBase):
    """Any JSON object."""

    type: Literal["json_object"]


class FormatJsonSchema(ResponsesBase):
    """JSON valid against a schema."""

    type: Literal["json_schema"]
    name: Name = "response"
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(ResponsesBase):
    """text: the output's format (and a verbosity hint, accepted as the hint it is)."""

    format: Annotated[FormatText | FormatJsonObject | FormatJsonSchema, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(ResponsesBase):
    """reasoning: effort "none" turns the template's thinking off, any other effort on."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


def _refuse_other_types(value: Any, allowed: tuple[str, ...], what: str, why: str) -> Any:
    for index, entry in enumerate(value if isinstance(value, list) else ()):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind is None and isinstance(entry, dict) and what == "item" and "role" in entry:
            continue  # an easy input message: {"role", "content"}
        if kind not in allowed:
            raise ValueError(f"{what} {index} has type {kind!r}, which Berth does not serve ({why})")
    return value


class ResponseInputs(ResponsesBase):
    """What shapes the prompt: POST /v1/responses/input_tokens counts it, POST /v1/responses generates from it."""

    model: Name | None = None
    input: str | Annotated[list[InputItem], Field(max_length=bounds.MAX_MESSAGES)] | None = None
    instructions: str | None = None
    previous_response_id: Name | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=bounds.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    conversation: None = Field(default=None, description="not supported: continue with previous_response_id")

    @field_validator("input", mode="before")
    @classmethod
    def _known_items(cls, value: Any) -> Any:
        value = _refuse_other_types(value, ITEM_TYPES, "item", "input items: " + ", ".join(ITEM_TYPES))
        if isinstance(value, list):  # an easy input message has no type
            return [{**item, "type": "message"} if isinstance(item, dict) and "type" not in item else item
                    for item in value]
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, value: Any) -> Any:
        return _refuse_other_types(value, ("function",), "tool", "only function tools")

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise ValueError(f"tool_choice type {value.get('type')!r} is not supported: use 'none', 'auto',"
                             " 'required' or {\"type\": \"function\", \"name\": ...}")
        return value

    def input_items(self) -> list[dict[str, Any]]:
        """This request's input as stored items: each with its type and an id, text content as parts."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [message_record(MessageItem(role="user", content=self.input))]
        return [message_record(item) if isinstance(item, MessageItem) else item_record(item) for item in self.input]

    def thinking(self) -> bool | None:
        """The template's thinking switch: off for effort "none", on for any other effort, else the default."""
        if self.reasoning is None or self.reasoning.effort is None:
            return None
        return self.reasoning.effort != "none"

    def chat_body(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat-completions body of this request over the whole conversation `items`."""
        messages = chat_messages(self.instructions, items)
        if not messages:
            raise InvalidRequest("input is required (or previous_response_id, or instructions)", param="input")
        body: dict[str, Any] = {"model": self.model, "messages": messages, "enable_thinking": self.thinking()}
        if self.tools:
            body["tools"] = [{"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                             for tool in self.tools]
        if isinstance(self.tool_choice, NamedFunction):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        text_format = self.text.format if self.text is not None else None
        if isinstance(text_format, FormatJsonSchema):
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": text_format.name, "schema": text_format.json_schema, "strict": text_format.strict}}
        elif isinstance(text_format, FormatJsonObject):
            body["response_format"] = {"type": "json_object"}
        return body

    def chat_request(self, items: list[dict[str, Any]]) -> ChatCompletionRequest:
        """The chat request of this request over the conversation `items` (checked as chat checks it)."""
        return parse(ChatCompletionRequest, self.chat_body(items))


class CreateResponse(ResponseInputs):
    """POST /v1/responses."""

    max_output_tokens: PositiveTokenCount | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = False
    store: bool | None = True
    background: bool | None = None
    include: Annotated[list[INCLUDABLE], Field(max_length=16)] | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: Name | None = None
    service_tier: str | None = None  # accepted: one tier here
    prompt_cache_key: str | None = None  # accepted: a routing hint
    safety_identifier: Name | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)  # caps built-in tool calls: there are none here
    prompt: None = Field(default=None, description="not supported: reusable prompts are OpenAI's")

    @model_validator(mode="after")
    def _not_in_background(self) -> CreateResponse:
        if self.background:
            raise ValueError("background is not supported by Berth yet; leave it out or false")
        return self

    @property
    def wants_logprobs(self) -> bool:
        """include asks for the output text's logprobs."""
        return LOGPROBS in (self.include or ())

    def chat_body(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat body, with the sampling fields and logprobs."""
        body = super().chat_body(items)
        body.update({"max_completion_tokens": self.max_output_tokens, "temperature": self.temperature,
                     "top_p": self.top_p, "user": self.user})
        if self.wants_logprobs:
            body.update({"logprobs": True, "top_logprobs": self.top_logprobs or 0})
        return body
