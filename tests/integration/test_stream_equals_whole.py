"""Every protocol's whole reply equals its streamed reply, as the clients themselves assemble it.

n=2 and a seed, plain and with a forced tool call: the streamed chunks are put together by the
`openai` library's own accumulator (chat), by hand from the raw SSE (completions, /invocations) or by
TGI's own client, and must say exactly what the whole reply says: text, reasoning, tool calls,
finish reasons, logprobs and usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from text_generation import Client

from tests.integration.conftest import RunningServer

SEEDED = {"temperature": 1.0, "seed": 7, "max_tokens": 12}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
def client(berth_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=berth_server.url("/v1"), api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _sse(response: httpx.Response) -> list[Any]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def _choices(completion: Any) -> list[dict[str, Any]]:
    """What a chat completion says, per choice, without ids that differ between two requests."""
    out = []
    for choice in sorted(completion.choices, key=lambda c: c.index):
        message = choice.message
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
        # Two requests, so batch shapes (and float rounding) may differ: logprobs agree to 1e-4.
        logprobs = [(t.token, pytest.approx(t.logprob, abs=1e-4)) for t in (choice.logprobs.content or [])] \
            if choice.logprobs else None
        out.append({"content": message.content or None, "calls": calls, "finish": choice.finish_reason,
                    "logprobs": logprobs})
    return out


@pytest.mark.parametrize("extra", [{"logprobs": True, "top_logprobs": 2},
                                   # One call, room to finish it: a call the model is still writing at max_tokens is cut the same
    # way streamed and whole, but leaves nothing to compare.
    {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 64}],
    ids=["plain", "tool-call"])
def test_chat(client: openai.OpenAI, berth_server: RunningServer, extra: dict[str, Any]) -> None:
    body = {"model": berth_server.model_uid, "messages": MESSAGES, "n": 2, **SEEDED, **extra}
    whole = client.chat.completions.create(**body)
    # The openai library's own accumulator (what its stream helpers build on); its get_final_completion
    # would refuse a "length" finish, so the snapshot is read instead.
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}):
        state.handle_chunk(chunk)
    assembled = state.current_completion_snapshot
    assert _choices(assembled) == _choices(whole)
    assert assembled.usage == whole.usage and whole.usage is not None
    if "tools" in extra and berth_server.engine != "llama.cpp":  # llama.cpp's JSON grammar lets the random
        # tiny model write whitespace until max_tokens; the others write compact JSON, so the call ends
        assert all(c["calls"] and c["finish"] == "tool_calls" for c in _choices(whole)), _choices(whole)


def test_completions(berth_server: RunningServer) -> None:
    body = {"model": berth_server.model_uid, "prompt": "Once upon a time", "n": 2, "logprobs": 2, **SEEDED}
    whole = httpx.post(berth_server.url("/v1/completions"), json=body, timeout=120).json()
    with httpx.stream("POST", berth_server.url("/v1/completions"), timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        chunks = _sse(response)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            finishes[choice["index"]] = choice["finish_reason"] or finishes.get(choice["index"], "")
            tokens.setdefault(choice["index"], []).extend((choice["logprobs"] or {}).get("tokens", []))
    assert [texts[i] for i in range(2)] == [c["text"] for c in whole["choices"]]
    assert [finishes[i] for i in range(2)] == [c["finish_reason"] for c in whole["choices"]]
    assert [tokens[i] for i in range(2)] == [c["logprobs"]["tokens"] for c in whole["choices"]]
    assert chunks[-1]["usage"] == whole["usage"]


def test_tgi(berth_server: RunningServer) -> None:
    tgi = Client(berth_server.base_url, timeout=120)
    whole = tgi.generate("Once upon a time", max_new_tokens=12, do_sample=True, seed=7, top_n_tokens=2)
    events = list(tgi.generate_stream("Once upon a time", max_new_tokens=12, do_sample=True, seed=7, top_n_tokens=2))
    real = [e for e in events if not (e.token.special and e.token.id == 0 and not e.token.text)]
    assert [e.token.id for e in real] == [t.id for t in whole.details.tokens]
    assert [[t.id for t in e.top_tokens or []] for e in real] == [[t.id for t in top] for top in
                                                                  whole.details.top_tokens or []]
    final = events[-1]
    assert final.generated_text == whole.generated_text and final.details is not None
    assert (final.details.finish_reason, final.details.generated_tokens, final.details.seed) == (
        whole.details.finish_reason, whole.details.generated_tokens, whole.details.seed)


@pytest.mark.parametrize("body", [
    {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 12, "do_sample": True, "seed": 7,
                                                  "details": True}},
    {"messages": MESSAGES, "n": 2, **SEEDED},
], ids=["tgi-body", "chat-body"])
def test_invocations(berth_server: RunningServer, body: dict[str, Any]) -> None:
    whole = httpx.post(berth_server.url("/invocations"), json=body, timeout=120).json()
    with httpx.stream("POST", berth_server.url("/invocations"), json={**body, "stream": True},
                      timeout=120) as response:
        events = _sse(response)
    if "inputs" in body:
        (reply,) = whole
        assert events[-1]["generated_text"] == reply["generated_text"]
        assert [e["token"]["id"] for e in events if e["token"]["text"] or not e["token"]["special"]] == [
            t["id"] for t in reply["details"]["tokens"]]
        return
    texts = {0: "", 1: ""}
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert [texts[0], texts[1]] == [c["message"]["content"] for c in whole["choices"]]
