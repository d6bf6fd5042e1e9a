"""OpenAI service: canonical streams in, OpenAI chunks out; a whole reply is the fold of the same chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from berth_server.canonical import Accepted, GenerateRequest, TokenInfo
from berth_server.client.generation import FinishReasons, Generation, start_generation
from berth_server.client.state import FrontendState
from berth_server.errors import BerthError
from berth_server.protocols import tool_calls
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest
from berth_server.protocols.reply import FoldRules, WireReply
from berth_server.protocols.tool_syntax import ToolChoice

SYSTEM_FINGERPRINT = "berth"
# OpenAI has no word for an aborted or failed request: vLLM's "abort" and "error" are what its clients see.
FINISH_REASONS = FinishReasons({"length": "length", "eos": "stop", "stop": "stop", "abort": "abort", "error": "error"},
                               unknown="stop")


def start(state: FrontendState, requests: list[Any]) -> Generation:
    """Start every choice's request and await their acceptance (a rejection is still an HTTP error)."""
    return start_generation(state.gateway, requests)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _header(kind: str, model: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": model, "system_fingerprint": SYSTEM_FINGERPRINT}


def _token_text(token_id: int, text: str, as_ids: bool) -> str:
    """A token as logprobs name it: its text, or vLLM's "token_id:<id>" (return_tokens_as_token_ids)."""
    return f"token_id:{token_id}" if as_ids else text


def chat_logprobs(tokens: list[TokenInfo], as_ids: bool = False) -> dict[str, Any]:
    """OpenAI chat logprobs from token details."""
    def entry(token_id: int, text: str, logprob: float | None) -> dict[str, Any]:
        text = _token_text(token_id, text, as_ids)
        return {"token": text, "logprob": logprob if logprob is not None else 0.0, "bytes": list(text.encode())}

    content = []
    for token in tokens:
        item = entry(token.id, token.text, token.logprob)
        item["top_logprobs"] = [entry(top.id, top.text, top.logprob) for top in token.top or []]
        content.append(item)
    return {"content": content}


def completion_logprobs(tokens: list[TokenInfo], offset: int = 0, as_ids: bool = False) -> dict[str, Any]:
    """Legacy completions logprobs (tokens, token_logprobs, top_logprobs, text_offset)."""
    result: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token in tokens:
        result["tokens"].append(_token_text(token.id, token.text, as_ids))
        result["token_logprobs"].append(token.logprob)
        result["top_logprobs"].append(
            {_token_text(top.id, top.text, as_ids): top.logprob for top in token.top or []} or None)
        result["text_offset"].append(offset)
        offset += len(token.text)
    return result


def _count(state: FrontendState, uid: str, prompt_tokens: int, completion_tokens: int) -> None:
    state.metrics.count_tokens(uid, prompt_tokens, completion_tokens)


def _target(state: FrontendState, body: ChatCompletionRequest | CompletionRequest) -> tuple[str, str | None]:
    """(uid, adapter): model names a model or an adapter of the default one; lora_name picks one too."""
    uid, adapter = state.gateway.resolve_target(body.model)
    return uid, body.lora_name or adapter


# -- chat -----------------------------------------------------------------------------------
CHAT_RULES = FoldRules(concat=frozenset({"content", "reasoning_content", "reasoning", "arguments"}),
                       by_index=frozenset({"choices", "tool_calls"}))
COMPLETION_RULES = FoldRules(concat=frozenset({"text"}), by_index=frozenset({"choices"}))


@dataclass(frozen=True)
class ChatPlan:
    """A chat request made ready to start: its model, its canonical requests, how to read its tool calls."""

    uid: str
    requests: list[GenerateRequest]
    choice: ToolChoice
    parser: tool_calls.ToolCallParser | None


def plan_chat(state: FrontendState, body: ChatCompletionRequest, request_id: str) -> ChatPlan:
    """Resolve the model, check tool_choice (before the model is asked anything) and build the requests;
    OpenAI Responses builds its chat request and goes through here too."""
    uid, adapter = _target(state, body)
    choice = body.tool_choice_mode()
    parser_name = tool_calls.parser_name(state.gateway, uid) if body.tools else None
    parser = tool_calls.parser_for(parser_name, choice) if body.tools else None
    return ChatPlan(uid, body.to_generate_requests(uid, request_id, parser_name, adapter), choice, parser)


def chat_completion(state: FrontendState, body: ChatCompletionRequest) -> WireReply:
    """Serve POST /v1/chat/completions: chunks, streamed or folded into one chat.completion."""
    plan = plan_chat(state, body, uuid.uuid4().hex)
    uid, parser = plan.uid, plan.parser
    generation = start(state, plan.requests)
    chunks = _chat_chunks(state, body, uid, body.model or uid, generation, parser,
                          include_usage=body.include_usage or not body.stream)
    # TGI's client (it always sends model "tgi") fails on `data: [DONE]`; it reads to connection close.
    return WireReply([chunks], CHAT_RULES, _whole_chat, stream=bool(body.stream), done=body.model != "tgi",
                     on_close=generation.close)


def _whole_chat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Folded chunks as one chat.completion: each choice's delta becomes its message."""
    folded = parts[0]
    choices = []
    for choice in folded.get("choices", []):
        message = dict(choice.get("delta") or {})
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in calls]
            message["content"] = message.get("content") or None  # OpenAI: null content beside calls
        choices.append({"index": choice["index"], "message": message, "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason")})
    return {**_header_of(folded, "chat.completion"), "choices": choices, "usage": folded.get("usage")}


def _header_of(folded: dict[str, Any], kind: str) -> dict[str, Any]:
    keys = ("id", "object", "created", "model", "system_fingerprint")
    return {**{key: folded.get(key) for key in keys}, "object": kind}


def _chat_chunks(state: FrontendState, body: ChatCompletionRequest, uid: str, model: str,
                 generation: Generation, parser: tool_calls.ToolCallParser | None,
                 include_usage: bool) -> Iterator[dict[str, Any]]:
    """Chat chunks, choices interleaved as they are generated; every delta carries role and tool_calls
    (TGI's client needs them)."""
    header = _header("chat.completion.chunk", model)
    completion_tokens = 0
    tools: dict[int, tool_calls.ChoiceToolStream] = {}
    for index in range(generation.choice_count):
        yield {**header, "choices": [{"index": index, "delta": {"role": "assistant", "content": "",
                                                                "tool_calls": None},
                                      "logprobs": None, "finish_reason": None}]}
        if parser is not None:
            tools[index] = tool_calls.ChoiceToolStream(parser, body.tool_choice_mode(),
                                                       body.parallel_tool_calls is not False)
    for index, delta in generation.choice_deltas():
        text, calls = delta.text, None
        if parser is not None:
            text, calls = tools[index].step(delta.text, delta.finish_reason is not None)
        choice_delta: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": calls}
        if delta.reasoning:  # both names: reasoning_content (DeepSeek, vLLM before 0.10) and vLLM's reasoning
            choice_delta["reasoning_content"] = choice_delta["reasoning"] = delta.reasoning
        logprobs = chat_logprobs(delta.tokens, bool(body.return_tokens_as_token_ids)) \
            if body.logprobs and delta.tokens else None
        finish = FINISH_REASONS.word(delta.finish_reason) if delta.finish_reason else None
        if parser is not None:
            finish = tools[index].finish_reason(finish)
        if delta.finish_reason is not None:
            completion_tokens += delta.completion_tokens
        if not text and not calls and not delta.reasoning and finish is None and logprobs is None:
            continue
        yield {**header, "choices": [{"index": index, "delta": choice_delta, "logprobs": logprobs,
                                      "finish_reason": finish}]}
    prompt_tokens = generation.prompt_tokens
    _count(state, uid, prompt_tokens, completion_tokens)
    if include_usage:
        yield {**header, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


# -- completions ----------------------------------------------------------------------------
def completion(state: FrontendState, body: CompletionRequest) -> WireReply:
    """Serve POST /v1/completions: chunks, streamed or folded into one text_completion."""
    uid, adapter = _target(state, body)
    generation = start(state, body.to_generate_requests(uid, uuid.uuid4().hex, adapter))
    chunks = _completion_chunks(state, body, uid, body.model or uid, generation,
                                include_usage=body.include_usage or not body.stream)
    return WireReply([chunks], COMPLETION_RULES, _whole_completion, stream=bool(body.stream), done=True,
                     on_close=generation.close)


def _whole_completion(parts: list[dict[str, Any]]) -> dict[str, Any]:
    folded = parts[0]
    choices = [{"index": c["index"], "text": c.get("text") or "", "logprobs": c.get("logprobs"),
                "finish_reason": c.get("finish_reason")} for c in folded.get("choices", [])]
    return {**_header_of(folded, "text_completion"), "choices": choices, "usage": folded.get("usage")}


def _echo(body: CompletionRequest, prompt: str | list[int], accepted: Accepted) -> str:
    """The prompt text to put in front of a choice when echo is asked (a token-id prompt as the model reads it)."""
    if not body.echo:
        return ""
    return prompt if isinstance(prompt, str) else accepted.prompt_text or ""


def _completion_chunks(state: FrontendState, body: CompletionRequest, uid: str, model: str,
                       generation: Generation, include_usage: bool) -> Iterator[dict[str, Any]]:
    """Completion chunks, choices interleaved as they are generated (choice index = prompt * n + i)."""
    header = _header("text_completion", model)
    completion_tokens = 0
    offsets: dict[int, int] = {}  # where each choice's next text starts (logprobs' text_offset)
    prompts = body.prompts()
    for index in range(generation.choice_count):
        stream = generation.stream_of(index)
        prefix = _echo(body, prompts[stream], generation.accepted[stream])
        offsets[index] = len(prefix)
        if prefix:
            yield {**header, "choices": [{"index": index, "text": prefix, "logprobs": None, "finish_reason": None}]}
    for index, delta in generation.choice_deltas():
        logprobs = None
        if body.logprobs is not None and delta.tokens:
            logprobs = completion_logprobs(delta.tokens, offsets[index], bool(body.return_tokens_as_token_ids))
        offsets[index] += len(delta.text)
        finish = FINISH_REASONS.word(delta.finish_reason) if delta.finish_reason else None
        if delta.finish_reason is not None:
            completion_tokens += delta.completion_tokens
        if not delta.text and finish is None and logprobs is None:
            continue
        yield {**header, "choices": [{"index": index, "text": delta.text, "logprobs": logprobs,
                                      "finish_reason": finish}]}
    prompt_tokens = generation.prompt_tokens
    _count(state, uid, prompt_tokens, completion_tokens)
    if include_usage:
        yield {**header, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


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
        if status.get("state") == "ready" and description.get("model_type", "LLM") == "LLM":
            data += _adapter_entries(state, uid, created)
    return {"object": "list", "data": data}


def _adapter_entries(state: FrontendState, uid: str, created: int) -> list[dict[str, Any]]:
    """A model's LoRA adapters as vLLM lists them: id = adapter name, parent = the base model."""
    try:
        adapters = state.gateway.adapters(uid)
    except BerthError:
        return []  # a busy or restarting model lists no adapters rather than failing the list
    return [{"id": a.name, "object": "model", "created": created, "owned_by": "berth", "root": a.src,
             "parent": uid, "model_type": "LLM", "model_name": a.name, "model_ability": ["chat", "generate"],
             "state": "ready"} for a in adapters]
