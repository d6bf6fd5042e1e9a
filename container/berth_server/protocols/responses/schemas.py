"""OpenAI Responses wire schemas (pydantic, no I/O): input items, tools and text.format become one chat request.

A Responses request is a chat request in other clothes: its input items become chat messages (a
`function_call` an assistant tool call, a `function_call_output` a tool message, a `reasoning` item the
next assistant message's reasoning_content), its flat function tools the chat tools, `text.format` the
response_format, `reasoning.effort` the template's thinking switch. The chat request then builds the
canonical request as /v1/chat/completions does (protocols/openai), so tool_choice enforcement,
constraints and reasoning behave the same on both routes.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name, PositiveTokenCount
from berth_server.protocols.openai.schemas import ChatCompletionRequest
from berth_server.protocols.wire import parse

ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
PART_TYPES = ("input_text", "output_text", "refusal")
# What `include` may ask for (OpenAI's list); only the logprobs one adds anything here.
INCLUDABLE = Literal[
    "message.output_text.logprobs", "reasoning.encrypted_content", "file_search_call.results",
    "web_search_call.results", "web_search_call.action.sources", "message.input_image.image_url",
    "computer_call_output.output.image_url", "code_interpreter_call.outputs",
]
LOGPROBS = "message.output_text.logprobs"
# Item id prefixes, as OpenAI's own.
ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def new_id(prefix: str) -> str:
    """A fresh id such as resp_<hex> or msg_<hex>."""
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesBase(BaseModel):
    """Every Responses schema: unknown keys are ignored (clients add their own: Codex's client_metadata)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class TextPart(ResponsesBase):
    """A text content part: input_text (user, system, developer) or output_text (an assistant's earlier reply)."""

    type: Literal["input_text", "output_text"]
    text: str


class RefusalPart(ResponsesBase):
    """An assistant's earlier refusal."""

    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


def _text_parts_only(value: Any) -> Any:
    for part in value if isinstance(value, list) else ():
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise ValueError(f"content part type {kind!r} is not supported: Berth serves text models"
                             f" ({', '.join(PART_TYPES)})")
    return value


# A string, or text parts (an image or file part is refused by name).
Content = Annotated[str | Annotated[list[ContentPart], Field(max_length=bounds.MAX_MESSAGES)],
                    BeforeValidator(_text_parts_only)]


class ItemBase(ResponsesBase):
    """What every input item may carry: its id and status (echoed back from an earlier response)."""

    id: Name | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class MessageItem(ItemBase):
    """A message: the user's, the system's or developer's, or an assistant's earlier one."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content


class FunctionCallItem(ItemBase):
    """A function call the model made earlier (echoed back by the client)."""

    type: Literal["function_call"]
    call_id: Name = Field(min_length=1)
    name: Name = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(ItemBase):
    """What a function call returned."""

    type: Literal["function_call_output"]
    call_id: Name = Field(min_length=1)
    output: Content


class ReasoningText(ResponsesBase):
    """A piece of reasoning text (content) or of its summary."""

    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(ItemBase):
    """An earlier reasoning item: its text goes back to the template as the next assistant turn's reasoning."""

    type: Literal["reasoning"]
    summary: Annotated[list[ReasoningText], Field(max_length=bounds.MAX_MESSAGES)] = []
    content: Annotated[list[ReasoningText], Field(max_length=bounds.MAX_MESSAGES)] | None = None
    encrypted_content: str | None = None


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
                      Field(discriminator="type")]


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
            return [_message_record(MessageItem(role="user", content=self.input))]
        return [_message_record(item) if isinstance(item, MessageItem) else _record(item) for item in self.input]

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


def _message_record(item: MessageItem) -> dict[str, Any]:
    content = item.content
    if isinstance(content, str):
        kind = "output_text" if item.role == "assistant" else "input_text"
        parts: list[dict[str, Any]] = [{"type": kind, "text": content}]
    else:
        parts = [part.model_dump() for part in content]
    for part in parts:
        if part["type"] == "output_text":
            part.setdefault("annotations", [])
    return {"id": item.id or new_id("msg"), "type": "message", "role": item.role, "content": parts,
            "status": item.status or "completed"}


def _record(item: FunctionCallItem | FunctionCallOutputItem | ReasoningItem) -> dict[str, Any]:
    record = item.model_dump(exclude_none=True)
    record["id"] = item.id or new_id(ID_PREFIX[item.type])
    record.setdefault("status", "completed")
    return record


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", part.get("refusal", "")) for part in content)


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as chat messages: calls join the assistant message before them, reasoning the one after it.

    A developer message is a system message (OpenAI's own reading of the role); instructions come first.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    reasoning = ""
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning += "".join(part["text"] for part in item.get("content") or item.get("summary") or [])
            continue
        if kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text_of(item["output"])})
            continue
        if kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:  # pending reasoning opens a turn
                last.setdefault("tool_calls", []).append(call)
                continue
            # "" rather than None: templates such as SmolLM2's concatenate the content as a string
            message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
        else:
            role = "system" if item["role"] == "developer" else item["role"]
            message = {"role": role, "content": _text_of(item["content"])}
        if message["role"] == "assistant" and reasoning:
            message["reasoning_content"] = reasoning
            reasoning = ""
        messages.append(message)
    return messages
