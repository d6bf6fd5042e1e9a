"""OpenAI Responses service: a request becomes a chat request (protocols/openai), its deltas typed Responses events.

The canonical request is built exactly as /v1/chat/completions builds it (plan_chat), so tool_choice
enforcement, tool-call parsing, constraints and the thinking switch are the chat route's. The
events (events.py) stream as named SSE; the whole reply is their fold (fold.py). A stored response
(store.py) is written before its terminal event goes out, so a client that saw response.completed
can retrieve it at once, from any worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from berth_server.canonical import Delta
from berth_server.client.generation import FinishReasons, Generation, coalesce, start_generation
from berth_server.client.state import FrontendState
from berth_server.errors import BerthError, GenerationFailed
from berth_server.protocols import tool_calls
from berth_server.protocols.openai.service import ChatPlan, chat_logprobs
from berth_server.protocols.reply import FoldRules, WireItem, WireReply
from berth_server.protocols.responses.events import ResponseWriter, Status
from berth_server.protocols.responses.fold import fold_response, whole_response
from berth_server.protocols.responses.items import new_id
from berth_server.protocols.responses.schemas import CreateResponse, ResponseInputs
from berth_server.protocols.responses.store import ResponseStore, StoredResponse
from berth_server.protocols.responses.truncation import fit_conversation

log = logging.getLogger(__name__)

# A response is completed, incomplete (out of tokens) or failed; an engine error fails it too.
FINISH_REASONS = FinishReasons({"length": "incomplete", "eos": "completed", "stop": "completed", "abort": "failed"},
                               unknown="completed")


def conversation_of(store: ResponseStore, body: ResponseInputs) -> list[dict[str, Any]]:
    """The items the model sees: the previous response's conversation and output, then this input."""
    previous = store.get(body.previous_response_id).conversation() if body.previous_response_id else []
    return [*previous, *body.input_items()]


def count_input_tokens(state: FrontendState, store: ResponseStore, body: ResponseInputs) -> dict[str, Any]:
    """POST /v1/responses/input_tokens: the prompt's tokens, rendered as its generation would render it."""
    conversation = conversation_of(store, body)
    plan, _ = fit_conversation(state, body, conversation, new_id("count"))
    tokens = state.gateway.tokenize(plan.uid, chat=plan.requests[0])
    return {"object": "response.input_tokens", "input_tokens": len(tokens)}


def create_response(state: FrontendState, store: ResponseStore, body: CreateResponse) -> WireReply:
    """POST /v1/responses: typed events, streamed as named SSE or folded into the response object."""
    response_id = new_id("resp")
    conversation = conversation_of(store, body)
    plan, _ = fit_conversation(state, body, conversation, response_id)
    generation = start_generation(state.gateway, plan.requests)
    writer = ResponseWriter(_response_object(body, response_id, body.model or plan.uid))
    events = _events(state, store, body, plan, generation, writer, conversation)
    return WireReply([events], FoldRules(), whole_response, stream=bool(body.stream), on_close=generation.close,
                     framing="sse_named", fold=fold_response)


def _response_object(body: CreateResponse, response_id: str, model: str) -> dict[str, Any]:
    """The response as response.created shows it: the request's settings, no output yet."""
    text_format = body.text.format if body.text is not None else None
    tool_choice = body.tool_choice if body.tool_choice is not None else ("auto" if body.tools else "none")
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens, "max_tool_calls": body.max_tool_calls, "model": model,
        "output": [], "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "service_tier": "default", "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"},
                 "verbosity": (body.text.verbosity if body.text else None) or "medium"},
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [tool.model_dump() for tool in body.tools or []],
        "top_logprobs": body.top_logprobs or 0, "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": body.truncation or "disabled", "usage": None, "user": body.user,
        "metadata": body.metadata or {}, "prompt_cache_key": body.prompt_cache_key,
        "safety_identifier": body.safety_identifier,
    }


def usage(prompt_tokens: int, output_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    """Responses usage, with its details objects."""
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + output_tokens}


def _delta_events(writer: ResponseWriter, delta: Delta, text: str, calls: list[dict[str, Any]] | None,
                  logprobs: bool) -> list[Any]:
    """One delta's events: reasoning first (it precedes the answer), then text, then call starts and arguments."""
    events = writer.reasoning(delta.reasoning) if delta.reasoning else []
    if text:
        events += writer.text(text, chat_logprobs(delta.tokens)["content"] if logprobs and delta.tokens else [])
    for call in calls or ():
        if call.get("id"):
            events += writer.call(call["id"], call["function"]["name"])
        if call["function"].get("arguments"):
            events += writer.arguments(call["function"]["arguments"])
    return events


def _events(state: FrontendState, store: ResponseStore, body: CreateResponse, plan: ChatPlan,
            generation: Generation, writer: ResponseWriter, conversation: list[dict[str, Any]]) -> Iterator[WireItem]:
    """The response's events, from response.created to its terminal event; a failure is response.failed."""
    yield writer.start()
    tools = None if plan.parser is None else \
        tool_calls.ChoiceToolStream(plan.parser, plan.choice, body.parallel_tool_calls is not False)
    logprobs = body.wants_logprobs and tools is None
    output_tokens = reasoning_tokens = 0
    finish: str | None = None
    try:
        for batch in generation.streams[0].batches():  # one request, one choice
            # Reasoning comes first: the tokens up to its last piece are reasoning tokens (counted before
            # the batch is merged into one delta, so a batch that ends the reasoning counts exactly).
            reasoning_tokens = max([d.completion_tokens for d in batch if d.reasoning], default=reasoning_tokens)
            delta = coalesce(batch)
            last = delta.finish_reason is not None
            text, calls = tools.step(delta.text, last) if tools is not None else (delta.text, None)
            events = _delta_events(writer, delta, text, calls, logprobs)
            if last:
                output_tokens, finish = delta.completion_tokens, delta.finish_reason
            if events:
                yield events
        status: Status = FINISH_REASONS.word(finish)  # type: ignore[assignment]
        if status == "failed":
            raise GenerationFailed("the generation was aborted (the server is shutting down or the model stopped)")
        state.metrics.count_tokens(plan.uid, generation.prompt_tokens, output_tokens)
        terminal = writer.finish(status, usage(generation.prompt_tokens, output_tokens, reasoning_tokens),
                                 int(time.time()))
    except BerthError as error:
        terminal = writer.finish("failed", None, int(time.time()), error)
    except Exception as exc:  # any failure ends the stream as response.failed, never mid-air
        log.exception("response %s failed", writer.response["id"])
        terminal = writer.finish("failed", None, int(time.time()),
                                 GenerationFailed(f"internal error: {type(exc).__name__}"))
    if body.store is not False:
        _keep(store, StoredResponse(writer.response, conversation))
    yield terminal


def _keep(store: ResponseStore, stored: StoredResponse) -> None:
    """Store a finished response; a store that cannot write loses it (a later GET is a 404), not the reply."""
    try:
        store.put(stored)
    except Exception:  # sqlite3 or disk errors: the generated reply still goes out
        log.exception("could not store response %s", stored.response["id"])
