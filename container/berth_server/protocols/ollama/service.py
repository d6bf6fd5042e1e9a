"""Ollama service: canonical streams in, Ollama NDJSON chunks out; a whole reply is the fold of the same chunks.

Every chunk is {"model", "created_at", "message" (chat) or "response" (generate), "done": false}; the
last has "done": true, "done_reason" and the counts and durations (nanoseconds) the Generation
measured: prompt eval = until the first token, eval = the rest. Tool calls come whole, each in the
chunk where its arguments closed; thinking comes in message.thinking (chat) or thinking (generate).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from berth_server.canonical import GenerateRequest, TokenInfo
from berth_server.client.generation import FinishReasons, Generation, start_generation
from berth_server.client.state import FrontendState
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelDescription
from berth_server.protocols import tool_calls
from berth_server.protocols.ollama.models import iso, resolve, resolve_target
from berth_server.protocols.ollama.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateFields,
    GenerateRequestWire,
)
from berth_server.protocols.reply import FoldRules, WireEvent, WireReply

# Ollama ends with "stop" or "length"; it has no word for an aborted or failed generation (an error line).
FINISH_REASONS = FinishReasons({"length": "length", "eos": "stop", "stop": "stop"}, unknown="stop")
RULES = FoldRules(concat=frozenset({"content", "thinking", "response"}))
# Without a parser of its own a model's calls are read as Ollama reads them: JSON {"name", "arguments"}.
FALLBACK_PARSER = "llama3_json"


def _whole(parts: list[WireEvent]) -> WireEvent:
    return parts[0]


def _checked(state: FrontendState, body: GenerateFields, route: str) -> tuple[str, str | None, ModelDescription]:
    """The model's uid, adapter and description, once the request is known to suit it (a 4xx before
    anything starts)."""
    uid, adapter = resolve_target(state, body.model)
    description = state.gateway.describe(uid)
    if description.model_type != "LLM":
        raise InvalidRequest(f"model '{body.model}' is an {description.model_type} model: it does not support "
                             f"{route}", param="model")
    if body.think is True and not description.reasoning:
        raise InvalidRequest(f"model '{body.model}' does not support thinking", param="think")
    num_ctx = body.opts.num_ctx
    if num_ctx is not None and num_ctx > description.context_length:
        raise InvalidRequest(f"options.num_ctx {num_ctx} is over the context of model '{body.model}' "
                             f"({description.context_length} tokens)", param="options.num_ctx")
    return uid, adapter, description


def _no_images(has_images: bool, model: str) -> None:
    if has_images:
        raise InvalidRequest(f"model '{model}' does not support images (Berth serves text models here)",
                             param="images")


def _loaded(body: GenerateFields, key: str) -> WireReply:
    """Ollama's answer to a request with nothing to generate: the model is loaded (Berth's always are)."""
    empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    event = {"model": body.model, "created_at": iso(time.time()), key: empty, "done": True, "done_reason": "load"}
    return WireReply([[event]], RULES, _whole, stream=body.stream, framing="ndjson")


def chat(state: FrontendState, body: ChatRequest) -> WireReply:
    """POST /api/chat: NDJSON chunks, streamed or folded into one reply."""
    uid, adapter, description = _checked(state, body, "chat")
    _no_images(body.images(), body.model)
    if not body.messages:
        return _loaded(body, "message")
    parser = None
    request = body.to_generate_request(uid, uuid.uuid4().hex, adapter)
    if body.tools:
        own = description.tool_call_parser
        parser = tool_calls.TOOL_CALL_PARSERS[own if own in tool_calls.TOOL_CALL_PARSERS else FALLBACK_PARSER]
        request.sampling = tool_calls.keeping_special_tokens(request.sampling, own, tool_calls.ToolChoice("auto"))
    generation = start_generation(state.gateway, [request])
    events = _events(state, body, uid, generation, "message", parser)
    return WireReply([events], RULES, _whole, stream=body.stream, framing="ndjson", on_close=generation.close)


def generate(state: FrontendState, body: GenerateRequestWire) -> WireReply:
    """POST /api/generate: NDJSON chunks, streamed or folded into one reply."""
    uid, adapter, description = _checked(state, body, "generate")
    _no_images(bool(body.images), body.model)
    if body.prompt is None or (not body.prompt and not body.system):
        return _loaded(body, "response")
    request = body.to_generate_request(uid, uuid.uuid4().hex, adapter)
    if body.suffix:
        _fill_in_middle(request, body, description)
    generation = start_generation(state.gateway, [request])
    events = _events(state, body, uid, generation, "response", None)
    return WireReply([events], RULES, _whole, stream=body.stream, framing="ndjson", on_close=generation.close)


def _fill_in_middle(request: GenerateRequest, body: GenerateRequestWire, description: ModelDescription) -> None:
    """Turn `request` into the model's fill-in-the-middle prompt (as is: no template, no system), or a 400."""
    if not description.fill_in_middle:
        raise InvalidRequest(f"model '{body.model}' does not support insert (fill-in-the-middle): leave suffix out",
                             param="suffix")
    prefix_marker, suffix_marker, middle_marker = description.fill_in_middle
    request.messages = None
    request.prompt = f"{prefix_marker}{body.prompt or ''}{suffix_marker}{body.suffix}{middle_marker}"
    request.split_reasoning = False


def _logprobs(tokens: list[TokenInfo]) -> list[dict[str, Any]]:
    return [{"token": t.text, "logprob": t.logprob if t.logprob is not None else 0.0,
             "top_logprobs": [{"token": top.text, "logprob": top.logprob} for top in t.top or []]} for t in tokens]


def _events(state: FrontendState, body: GenerateFields, uid: str, generation: Generation, key: str,
            parser: tool_calls.ToolCallParser | None) -> Iterator[WireEvent]:
    """The chunks of one reply: text (and thinking, calls, logprobs) as it comes, then the closing counts."""
    calls = tool_calls.WholeCallStream(parser) if parser is not None else None
    completion_tokens, reason = 0, None
    for delta in generation.deltas():
        text, complete = delta.text, list[dict[str, Any]]()
        if calls is not None:
            text, complete = calls.step(delta.text, delta.finish_reason is not None)
        if delta.finish_reason is not None:
            completion_tokens, reason = delta.completion_tokens, FINISH_REASONS.word(delta.finish_reason)
        logprobs = _logprobs(delta.tokens) if body.logprobs and delta.tokens else None
        if not (text or complete or delta.reasoning or logprobs):
            continue
        event: WireEvent = {"model": body.model, "created_at": iso(time.time())}
        if key == "message":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if delta.reasoning:
                message["thinking"] = delta.reasoning
            if complete:
                message["tool_calls"] = [{"function": call} for call in complete]
            event["message"] = message
        else:
            event["response"] = text
            if delta.reasoning:
                event["thinking"] = delta.reasoning
        event["done"] = False
        if logprobs:
            event["logprobs"] = logprobs
        yield event
    prompt_tokens = generation.prompt_tokens
    state.metrics.count_tokens(uid, prompt_tokens, completion_tokens)
    timings = generation.timings()
    # Tokens that reached the frontend together (a fast engine, a busy worker) measure 0 ns apart; clients
    # divide eval_count by eval_duration, so a generation that made tokens took at least 1 ns.
    eval_ns = max(timings.eval_ns, 1) if completion_tokens else 0
    last: WireEvent = {"model": body.model, "created_at": iso(time.time())}
    last[key] = {"role": "assistant", "content": ""} if key == "message" else ""
    last.update(done=True, done_reason=reason or FINISH_REASONS.unknown,
                total_duration=max(timings.total_ns, timings.prompt_eval_ns + eval_ns),
                load_duration=0, prompt_eval_count=prompt_tokens, prompt_eval_duration=timings.prompt_eval_ns,
                eval_count=completion_tokens, eval_duration=eval_ns)
    yield last


def embed(state: FrontendState, body: EmbedRequest) -> dict[str, Any]:
    """POST /api/embed: the same gateway call /v1/embeddings makes; vectors in input order."""
    started = time.monotonic_ns()
    uid = resolve(state, body.model)
    texts = body.texts()
    result = state.gateway.embed(uid, texts, body.dimensions) if texts else None
    vectors = [list(v) for v in result.vectors] if result is not None else []
    prompt_tokens = result.prompt_tokens if result is not None else 0
    return {"model": body.model, "embeddings": vectors, "total_duration": time.monotonic_ns() - started,
            "load_duration": 0, "prompt_eval_count": prompt_tokens}


def embeddings(state: FrontendState, body: EmbeddingsRequest) -> dict[str, Any]:
    """POST /api/embeddings (the older route): one vector, empty for an empty prompt."""
    uid = resolve(state, body.model)
    if not body.prompt:
        return {"embedding": []}
    return {"embedding": list(state.gateway.embed(uid, [body.prompt]).vectors[0])}
