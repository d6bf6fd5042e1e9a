"""The whole Anthropic message from its stream's typed events: what the anthropic SDK's stream accumulator builds.

message_start gives the message; content_block_start appends a block; text, thinking and signature
deltas extend it; input_json_delta pieces are joined and parsed as the SDK parses them (partial
JSON allowed, so a call cut short by max_tokens has the same input either way); message_delta sets
stop_reason, stop_sequence and usage (its counts are totals, so they replace). ping adds nothing.

The SDK raises on pieces that do not join into a JSON object prefix, so the service sends only
pieces after which `partial_input` still reads an object (service.py holds the rest back).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pydantic_core

from berth_server.errors import GenerationFailed
from berth_server.protocols.reply import WireEvent


def partial_input(text: str) -> dict[str, Any] | None:
    """A tool_use input as the SDK reads its joined partial_json: the object so far, or None when the
    text is not (yet) the start of a JSON object."""
    if not text.strip():
        return None
    try:
        value = pydantic_core.from_json(text, allow_partial=True)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def fold_message(events: Iterable[WireEvent]) -> WireEvent:
    """The message the events describe (GenerationFailed if they do not start with message_start)."""
    message: dict[str, Any] | None = None
    partial_json: dict[int, str] = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = copy.deepcopy(event["message"])
        elif kind == "ping":
            continue
        elif message is None:
            raise GenerationFailed(f"the reply's {kind} event came before message_start")
        elif kind == "content_block_start":
            message["content"].append(copy.deepcopy(event["content_block"]))
        elif kind == "content_block_delta":
            _apply_delta(message["content"][event["index"]], event["index"], event["delta"], partial_json)
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update({k: v for k, v in event.get("usage", {}).items() if v is not None})
    if message is None:
        raise GenerationFailed("the reply had no message_start event")
    return message


def _apply_delta(block: dict[str, Any], index: int, delta: dict[str, Any], partial_json: dict[int, str]) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    elif kind == "input_json_delta":
        partial_json[index] = partial_json.get(index, "") + delta["partial_json"]
        parsed = partial_input(partial_json[index])
        if parsed is not None:
            block["input"] = parsed
