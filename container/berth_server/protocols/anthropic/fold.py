"""The whole Anthropic message from its stream's typed events: what the anthropic SDK's stream accumulator builds.

message_start gives the message; content_block_start appends a block; text, thinking and signature
deltas extend it; input_json_delta pieces are joined and parsed as the SDK parses them (partial
JSON allowed, so a call cut short by max_tokens has the same input either way); message_delta sets
stop_reason, stop_sequence and usage (its counts are totals, so they replace). ping adds nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pydantic_core

from berth_server.errors import GenerationFailed
from berth_server.protocols.reply import WireEvent


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
        if partial_json[index].strip():
            block["input"] = pydantic_core.from_json(partial_json[index], allow_partial=True)
