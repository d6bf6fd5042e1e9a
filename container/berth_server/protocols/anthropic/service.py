"""Anthropic Messages service: a Messages request runs as the chat request it means; the reply is Anthropic's typed events.

message_start (with usage.input_tokens), ping, then content blocks in the order the model writes
them (thinking, text, tool_use; a new block each time the kind changes), each as
content_block_start / content_block_delta / content_block_stop, then message_delta (stop_reason,
stop_sequence, usage) and message_stop. The whole (non-streamed) message is the fold of the same
events (protocols/anthropic/fold.py); an error after the stream started is an `error` event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from berth_server.canonical import Delta
from berth_server.client.generation import FinishReasons, Generation, start_generation
from berth_server.client.state import FrontendState
from berth_server.launch_config import ModelDescription
from berth_server.protocols import tool_calls
from berth_server.protocols.anthropic.fold import fold_message, partial_input
from berth_server.protocols.anthropic.schemas import ConversationFields, CountTokensRequest, MessagesRequest
from berth_server.protocols.reply import FoldRules, WireEvent, WireReply

# Anthropic has no word for an aborted or failed generation: those end the stream with an `error` event.
FINISH_REASONS = FinishReasons({"length": "max_tokens", "eos": "end_turn", "stop": "end_turn"}, unknown="end_turn")


def _thinking(body: ConversationFields, model: ModelDescription) -> bool | None:
    """The template's thinking switch for this request (turning it off asks only a model that thinks)."""
    return body.thinking_switch(body.turns_thinking_off() and bool(model.reasoning))


def messages(state: FrontendState, body: MessagesRequest) -> WireReply:
    """Serve POST /v1/messages: typed events, streamed, or folded into one message."""
    uid, adapter = state.gateway.resolve_target(body.model)
    model = state.gateway.describe(uid)
    chat = body.to_chat_request(_thinking(body, model), model.max_total_tokens)
    choice = chat.tool_choice_mode()  # a bad tool_choice is refused before the model is asked anything
    parser_name = tool_calls.parser_name(state.gateway, uid) if chat.tools else None
    parser = tool_calls.parser_for(parser_name, choice) if chat.tools else None
    requests = chat.to_generate_requests(uid, uuid.uuid4().hex, parser_name, adapter)
    for request in requests:
        request.thinking_budget = body.thinking_budget  # honoured by the model process, on every engine
    generation = start_generation(state.gateway, requests)
    tools = tool_calls.ChoiceToolStream(parser, choice, chat.parallel_tool_calls is not False) if parser else None
    events = _events(state, body, uid, generation, tools)
    return WireReply([events], FoldRules(), _whole, stream=bool(body.stream), framing="sse_named",
                     fold=fold_message, on_close=generation.close)


def _whole(parts: list[WireEvent]) -> WireEvent:
    return parts[0]


def count_tokens(state: FrontendState, body: CountTokensRequest) -> dict[str, int]:
    """Serve POST /v1/messages/count_tokens: the prompt's tokens as /v1/messages would count them."""
    uid, adapter = state.gateway.resolve_target(body.model)
    chat = body.to_chat(enable_thinking=_thinking(body, state.gateway.describe(uid)))
    (request,) = chat.to_generate_requests(uid, uuid.uuid4().hex, None, adapter)
    return {"input_tokens": len(state.gateway.tokenize(uid, chat=request))}


class _Blocks:
    """The content blocks of one message: opens a block when the kind of output changes, numbers them."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "thinking", "text", or the id of the open tool_use block
        self.arguments = ""  # the open call's arguments sent so far
        self.held = ""  # and those held back: with them the arguments would not read as a JSON object

    def _switch(self, key: str, block: dict[str, Any]) -> list[WireEvent]:
        if self.open == key:
            return []
        events = self.close()
        self.index += 1
        self.open = key
        return [*events, {"type": "content_block_start", "index": self.index, "content_block": block}]

    def close(self) -> list[WireEvent]:
        """Stop the open block, if any."""
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def thinking(self, text: str) -> list[WireEvent]:
        """Thinking text, in a thinking block (its signature stays empty: nothing here signs it)."""
        if not text:
            return []
        return [*self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""}),
                {"type": "content_block_delta", "index": self.index,
                 "delta": {"type": "thinking_delta", "thinking": text}}]

    def text(self, text: str) -> list[WireEvent]:
        """Answer text, in a text block."""
        if not text:
            return []
        return [*self._switch("text", {"type": "text", "text": ""}),
                {"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}}]

    def calls(self, deltas: list[dict[str, Any]]) -> list[WireEvent]:
        """OpenAI tool-call deltas (a call's start with its id and name, then argument pieces) as tool_use blocks."""
        events: list[WireEvent] = []
        for delta in deltas:
            function = delta.get("function") or {}
            if delta.get("id"):
                call_id = "toolu_" + str(delta["id"]).removeprefix("call_")
                events += self._switch(call_id, {"type": "tool_use", "id": call_id, "name": function.get("name"),
                                                 "input": {}})
                self.arguments = self.held = ""
            if function.get("arguments"):
                events += self._arguments(function["arguments"])
        return events

    def _arguments(self, piece: str) -> list[WireEvent]:
        """A piece of the open call's arguments, sent once the arguments so far read as a JSON object.

        The SDK parses the joined pieces after each one and raises on text that is no JSON object
        prefix; a model's malformed arguments are held back, so the input is the object as far as it
        was well formed, streamed and whole alike.
        """
        pending = self.held + piece
        if partial_input(self.arguments + pending) is None:
            self.held = pending
            return []
        self.arguments, self.held = self.arguments + pending, ""
        return [{"type": "content_block_delta", "index": self.index,
                 "delta": {"type": "input_json_delta", "partial_json": pending}}]


def _events(state: FrontendState, body: MessagesRequest, uid: str, generation: Generation,
            tools: tool_calls.ChoiceToolStream | None) -> Iterator[WireEvent | list[WireEvent]]:
    """The message's events; what one delta brings goes out as one group (one write)."""
    input_tokens = generation.prompt_tokens
    yield [{"type": "message_start", "message": {
        "id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": body.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "stop_details": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}, {"type": "ping"}]
    blocks = _Blocks()
    last: Delta | None = None
    for delta in generation.deltas():
        text, calls = delta.text, None
        if tools is not None:
            text, calls = tools.step(delta.text, delta.finish_reason is not None)
        group = [*blocks.thinking(delta.reasoning), *blocks.text(text), *blocks.calls(calls or [])]
        if delta.finish_reason is not None:
            last = delta
            group += blocks.close()
        if group:
            yield group
    reason = FINISH_REASONS.word(last.finish_reason if last else None)  # aborted or failed: an error event
    stop_sequence = last.stop_sequence if last and last.stop_sequence in (body.stop_sequences or ()) else None
    if stop_sequence is not None:
        reason = "stop_sequence"
    if tools is not None and tools.count and last is not None and tools.finish_reason(last.finish_reason) != "length":
        reason = "tool_use"  # a whole call was made (one cut short by max_tokens stays max_tokens)
    output_tokens = last.completion_tokens if last else 0
    state.metrics.count_tokens(uid, input_tokens, output_tokens)
    yield [{"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop_sequence,
                                               "stop_details": None},
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}},
           {"type": "message_stop"}]
