"""The real `openai` client against the real server on the tiny model: chat, completions, streaming, errors."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.hang_up import assert_hang_up_aborts

MAX_TOKENS = 8
PROMPT = [{"role": "user", "content": "Tell me a story about a boat."}]


@pytest.fixture(scope="module")
def client(berth_server) -> Iterator[openai.OpenAI]:  # type: ignore[no-untyped-def]
    """An openai client on the shared server (no retries: a failure must show)."""
    # Closed at the end: an idle keep-alive connection would hold gunicorn's graceful shutdown.
    with openai.OpenAI(base_url=berth_server.base_url + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as client:
        yield client


def test_models_lists_the_default(client: openai.OpenAI, berth_server) -> None:  # type: ignore[no-untyped-def]
    ids = [model.id for model in client.models.list().data]
    assert berth_server.model_uid in ids


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and reply.system_fingerprint
    usage = reply.usage
    assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and isinstance(reply.choices[0].text, str)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= MAX_TOKENS


def test_chat_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 7}
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **kwargs))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_completion_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny", "prompt": "The sea", "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 3}
    whole = client.completions.create(**kwargs)  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs)
                       if c.choices)  # type: ignore[call-overload]
    assert streamed == whole.choices[0].text


def test_sixteen_concurrent_streams_complete(client: openai.OpenAI) -> None:
    def run(index: int) -> str | None:
        stream = client.chat.completions.create(model="tiny", max_tokens=MAX_TOKENS, stream=True, seed=index,
                                                messages=[{"role": "user", "content": f"Story number {index}"}])
        finish = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        finishes = list(pool.map(run, range(16), timeout=240))
    assert all(f in ("stop", "length") for f in finishes), finishes


@pytest.mark.parametrize("body", [
    {"messages": PROMPT, "max_tokens": -1},
    {"messages": PROMPT, "temperature": 5},
    {"messages": PROMPT, "top_p": 0},
    {"messages": PROMPT, "n": 0},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user"}]},
])
def test_bad_inputs_are_400_and_server_keeps_serving(berth_server, body) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(berth_server.url("/v1/chat/completions"), json={"model": "tiny", **body}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] and response.json()["detail"]
    ok = httpx.post(berth_server.url("/v1/chat/completions"),
                    json={"model": "tiny", "messages": PROMPT, "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_malformed_json_and_unknown_model(berth_server) -> None:  # type: ignore[no-untyped-def]
    bad = httpx.post(berth_server.url("/v1/chat/completions"), content=b"{oops",
                     headers={"Content-Type": "application/json"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(berth_server.url("/v1/completions"), json={"model": "no-such", "prompt": "x"}, timeout=30)
    assert missing.status_code == 404 and "no-such" in missing.json()["error"]["message"]


def test_client_disconnect_aborts_generation(berth_server) -> None:  # type: ignore[no-untyped-def]
    def hang_up() -> None:
        body = {"model": "tiny", "prompt": "Go on", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", berth_server.url("/v1/completions"), json=body, timeout=60) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break  # first token arrived: now hang up

    assert_hang_up_aborts(berth_server, hang_up)
