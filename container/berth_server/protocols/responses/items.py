"""OpenAI Responses input items (pydantic, no I/O), their stored records, and the chat messages they stand for.

Items are stored as records (dicts with ids and status, as the API returns them) and become chat
messages: a `function_call` an assistant tool call, a `function_call_output` a tool message, a
`reasoning` item the next assistant message's reasoning_content.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name

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


def message_record(item: MessageItem) -> dict[str, Any]:
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


def item_record(item: FunctionCallItem | FunctionCallOutputItem | ReasoningItem) -> dict[str, Any]:
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
