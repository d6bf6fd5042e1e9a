"""OpenAI service: canonical streams in, OpenAI replies out; non-streaming folds the same delta stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Response, jsonify

from berth_server.canonical import Delta, TokenInfo
from berth_server.frontend.gateway import GenerationStream
from berth_server.frontend.sse import sse_event, sse_response
from berth_server.frontend.state import FrontendState
from berth_server.protocols.openai import tool_calls
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

SYSTEM_FINGERPRINT = "berth"
_FINISH = {"length": "length", "eos": "stop", "stop": "stop", "abort": "abort", "error": "error"}


@dataclass
class Folded:
    """One choice's whole output, folded from its deltas."""

    text: str = ""
    reasoning: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        """Fold one delta in."""
        self.text += delta.text
        self.reasoning += delta.reasoning
        if delta.tokens:
            self.tokens.extend(delta.tokens)
        self.completion_tokens = max(self.completion_tokens, delta.completion_tokens)
        if delta.finish_reason is not None:
            self.finish_reason = _FINISH.get(delta.finish_reason, "stop")


def start(state: FrontendState, body: SamplingFields, requests: list[Any]) -> list[GenerationStream]:
    """Send every choice's request, then wait until each is accepted (so errors are still HTTP errors)."""
    streams: list[GenerationStream] = []
    try:
        for request in requests:
            streams.append(state.gateway.generate(request))
        for stream in streams:
            stream.accepted  # noqa: B018 - raises the typed error of a rejected request
    except BaseException:
        close_all(streams)
        raise
    return streams


def close_all(streams: list[GenerationStream]) -> None:
    """Close every stream (abort the unfinished ones)."""
    for stream in streams:
        stream.close()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _header(kind: str, model: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": model, "system_fingerprint": SYSTEM_FINGERPRINT}


def chat_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    """OpenAI chat logprobs from token details."""
    def entry(text: str, logprob: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": logprob if logprob is not None else 0.0, "bytes": list(text.encode())}

    content = []
    for token in tokens:
        item = entry(token.text, token.logprob)
        item["top_logprobs"] = [entry(top.text, top.logprob) for top in token.top or []]
        content.append(item)
    return {"content": content}


def completion_logprobs(tokens: list[TokenInfo], offset: int = 0) -> dict[str, Any]:
    """Legacy completions logprobs (tokens, token_logprobs, top_logprobs, text_offset)."""
    result: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token in tokens:
        result["tokens"].append(token.text)
        result["token_logprobs"].append(token.logprob)
        result["top_logprobs"].append({top.text: top.logprob for top in token.top or []} or None)
        result["text_offset"].append(offset)
        offset += len(token.text)
    return result


def _count(state: FrontendState, uid: str, prompt_tokens: int, completion_tokens: int) -> None:
    state.metrics.count_tokens(uid, prompt_tokens, completion_tokens)


# -- chat -----------------------------------------------------------------------------------
def chat_completion(state: FrontendState, body: ChatCompletionRequest) -> Response:
    """Serve POST /v1/chat/completions."""
    uid = state.gateway.resolve_model(body.model)
    requests = body.to_generate_requests(uid, uuid.uuid4().hex)
    streams = start(state, body, requests)
    model = body.model or uid
    parser = tool_calls.parser_for(state.gateway, uid, body.tools, body.tool_choice)
    if body.stream:
        # TGI's client (it always sends model "tgi") fails on `data: [DONE]`; it reads to connection close.
        return sse_response(_chat_chunks(state, body, uid, model, streams, parser), on_close=lambda: close_all(streams),
                            done=body.model != "tgi")
    folded, prompt_tokens, completion_tokens = _fold_all(state, uid, streams)
    reply = _header("chat.completion", model)
    reply["choices"] = []
    for index, f in enumerate(folded):
        message, finish = tool_calls.fold_message(parser, _message(f), f.finish_reason or "stop")
        reply["choices"].append({"index": index, "message": message,
                                 "logprobs": chat_logprobs(f.tokens) if body.logprobs else None,
                                 "finish_reason": finish})
    reply["usage"] = usage(prompt_tokens, completion_tokens)
    return jsonify(reply)


def coalesced(stream: GenerationStream) -> Iterator[Delta]:
    """The stream's deltas, merging those already queued into one (FINDINGS: halves the relay cost)."""
    batches = getattr(stream, "batches", None)
    if batches is None:  # a stand-in stream without batching (tests): plain deltas
        yield from stream
        return
    for batch in batches():
        if len(batch) == 1:
            yield batch[0]
            continue
        last = batch[-1]
        tokens = [token for delta in batch for token in delta.tokens or ()]
        yield Delta(request_id=last.request_id, text="".join(d.text for d in batch),
                    reasoning="".join(d.reasoning for d in batch), tokens=tokens or None,
                    completion_tokens=last.completion_tokens, finish_reason=last.finish_reason,
                    stop_sequence=last.stop_sequence)


def _fold_all(state: FrontendState, uid: str, streams: list[GenerationStream]) -> tuple[list[Folded], int, int]:
    """Fold every choice's stream (non-streaming replies), close them, count the tokens once."""
    try:
        folded = [_fold(stream) for stream in streams]
    finally:
        close_all(streams)
    prompt_tokens = streams[0].accepted.prompt_tokens
    completion_tokens = sum(f.completion_tokens for f in folded)
    _count(state, uid, prompt_tokens, completion_tokens)
    return folded, prompt_tokens, completion_tokens


def _fold(stream: GenerationStream) -> Folded:
    folded = Folded()
    for delta in stream:
        folded.add(delta)
    return folded


def _message(folded: Folded) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": folded.text, "tool_calls": None}
    if folded.reasoning:
        message["reasoning_content"] = folded.reasoning
    return message


def _chat_chunks(state: FrontendState, body: ChatCompletionRequest, uid: str, model: str,
                 streams: list[GenerationStream], parser: tool_calls.ToolCallParser | None) -> Iterator[str]:
    """Chat chunks; every delta carries role and tool_calls (TGI's client needs them)."""
    header = _header("chat.completion.chunk", model)
    completion_tokens = 0
    for index, stream in enumerate(streams):
        yield sse_event({**header, "choices": [{"index": index, "delta": {"role": "assistant", "content": "",
                                                                           "tool_calls": None},
                                                 "logprobs": None, "finish_reason": None}]})
        tools = tool_calls.ChoiceToolStream(parser) if parser is not None else None
        for delta in coalesced(stream):
            text, calls = delta.text, None
            if tools is not None:
                text, calls = tools.step(delta.text, delta.finish_reason is not None)
            choice_delta: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": calls}
            if delta.reasoning:
                choice_delta["reasoning_content"] = delta.reasoning
            logprobs = chat_logprobs(delta.tokens) if body.logprobs and delta.tokens else None
            finish = _FINISH.get(delta.finish_reason, "stop") if delta.finish_reason else None
            if tools is not None:
                finish = tools.finish_reason(finish)
            if delta.finish_reason is not None:
                completion_tokens += delta.completion_tokens
            if not text and not calls and not delta.reasoning and finish is None and logprobs is None:
                continue
            yield sse_event({**header, "choices": [{"index": index, "delta": choice_delta, "logprobs": logprobs,
                                                    "finish_reason": finish}]})
    prompt_tokens = streams[0].accepted.prompt_tokens
    _count(state, uid, prompt_tokens, completion_tokens)
    if body.include_usage:
        yield sse_event({**header, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


# -- completions ----------------------------------------------------------------------------
def completion(state: FrontendState, body: CompletionRequest) -> Response:
    """Serve POST /v1/completions."""
    uid = state.gateway.resolve_model(body.model)
    requests = body.to_generate_requests(uid, uuid.uuid4().hex)
    streams = start(state, body, requests)
    model = body.model or uid
    if body.stream:
        return sse_response(_completion_chunks(state, body, uid, model, streams),
                            on_close=lambda: close_all(streams), done=True)
    folded, prompt_tokens, completion_tokens = _fold_all(state, uid, streams)
    prefix = _echo(body, streams[0])
    reply = _header("text_completion", model)
    reply["choices"] = [
        {
            "index": index,
            "text": prefix + f.text,
            "logprobs": completion_logprobs(f.tokens, len(prefix)) if body.logprobs is not None else None,
            "finish_reason": f.finish_reason or "stop",
        }
        for index, f in enumerate(folded)
    ]
    reply["usage"] = usage(prompt_tokens, completion_tokens)
    return jsonify(reply)


def _echo(body: CompletionRequest, stream: GenerationStream) -> str:
    """The prompt text to put in front of the completion when echo is asked."""
    if not body.echo:
        return ""
    if isinstance(body.prompt, str):
        return body.prompt
    return stream.accepted.prompt_text or ""


def _completion_chunks(state: FrontendState, body: CompletionRequest, uid: str, model: str,
                       streams: list[GenerationStream]) -> Iterator[str]:
    header = _header("text_completion", model)
    completion_tokens = 0
    for index, stream in enumerate(streams):
        prefix = _echo(body, stream)
        offset = len(prefix)
        if prefix:
            yield sse_event({**header, "choices": [{"index": index, "text": prefix, "logprobs": None,
                                                    "finish_reason": None}]})
        for delta in coalesced(stream):
            logprobs = None
            if body.logprobs is not None and delta.tokens:
                logprobs = completion_logprobs(delta.tokens, offset)
            offset += len(delta.text)
            finish = _FINISH.get(delta.finish_reason, "stop") if delta.finish_reason else None
            if delta.finish_reason is not None:
                completion_tokens += delta.completion_tokens
            if not delta.text and finish is None and logprobs is None:
                continue
            yield sse_event({**header, "choices": [{"index": index, "text": delta.text, "logprobs": logprobs,
                                                    "finish_reason": finish}]})
    prompt_tokens = streams[0].accepted.prompt_tokens
    _count(state, uid, prompt_tokens, completion_tokens)
    if body.include_usage:
        yield sse_event({**header, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


# -- models ---------------------------------------------------------------------------------
def list_models(state: FrontendState, created: int) -> dict[str, Any]:
    """GET /v1/models: OpenAI's list, with the fields xinference-client reads."""
    data = []
    for uid, status in state.gateway.statuses().items():
        if status.get("state") in ("stopped", "stopping"):
            continue
        description = status.get("description") or {}
        data.append({
            "id": uid,
            "object": "model",
            "created": created,
            "owned_by": "berth",
            "model_type": description.get("model_type", "LLM"),
            "model_name": description.get("model_name", uid),
            "model_ability": description.get("abilities", ["chat", "generate"]),
            "max_model_len": description.get("context_length"),
            "state": status.get("state"),
        })
    return {"object": "list", "data": data}
