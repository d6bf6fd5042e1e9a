"""Limits on the real server: token limits name the numbers, 429 past MAX_CONCURRENT_REQUESTS, 413 past 6 MiB."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import RunningServer, launch_serve

LIMITS = {"MAX_INPUT_TOKENS": "32", "MAX_TOTAL_TOKENS": "64", "MAX_CONCURRENT_REQUESTS": "2",
          "BERTH_MODEL_UID": "tiny"}
LONG_PROMPT = "word " * 200


@pytest.fixture(scope="module")
def limited(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = launch_serve(tiny_model, tmp_path_factory.mktemp("limits"), env=LIMITS)
    yield server
    server.stop()


def _post(server: RunningServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url(path), json=body, timeout=30)


def test_prompt_over_max_input_tokens_names_both_numbers(limited: RunningServer) -> None:
    openai = _post(limited, "/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 4})
    assert openai.status_code == 400
    assert "32" in openai.json()["error"]["message"] and openai.json()["detail"]
    tgi = _post(limited, "/generate", {"inputs": LONG_PROMPT, "parameters": {"max_new_tokens": 4}})
    assert tgi.status_code == 422
    assert tgi.json()["error_type"] == "validation" and "32" in tgi.json()["error"]


def test_prompt_plus_new_tokens_over_max_total_tokens(limited: RunningServer) -> None:
    reply = _post(limited, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 64}})  # any prompt + 64 > 64
    assert reply.status_code == 422
    assert "64" in reply.json()["error"]
    chat = _post(limited, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100})
    assert chat.status_code == 400 and "64" in chat.json()["error"]["message"]


@pytest.fixture(scope="module")
def crowded(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Two slots only, and no token limits, so long generations can hold both."""
    server = launch_serve(tiny_model, tmp_path_factory.mktemp("crowded"),
                          env={"MAX_CONCURRENT_REQUESTS": "2", "BERTH_MODEL_UID": "tiny"})
    yield server
    server.stop()


def test_past_max_concurrent_requests_is_429_overloaded_with_retry_after(crowded: RunningServer) -> None:
    holding = threading.Barrier(3)
    release = threading.Event()
    statuses: list[int] = []

    def hold_a_slot() -> None:
        body = {"messages": [{"role": "user", "content": "Go"}], "max_tokens": 1900, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", crowded.url("/v1/chat/completions"), json=body, timeout=60) as reply:
            statuses.append(reply.status_code)
            # Keep the iterator referenced: a discarded httpx line iterator closes the response,
            # which the server (rightly) treats as a disconnect and aborts.
            lines = reply.iter_lines()
            for line in lines:
                if line.startswith("data:"):  # generating now
                    break
            holding.wait(timeout=30)
            release.wait(timeout=30)  # leaving the block disconnects, which aborts the generation

    holders = [threading.Thread(target=hold_a_slot) for _ in range(2)]
    for holder in holders:
        holder.start()
    try:
        holding.wait(timeout=30)
        reply = _post(crowded, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    finally:
        release.set()
        for holder in holders:
            holder.join(timeout=60)
    assert statuses == [200, 200]
    assert reply.status_code == 429, reply.text
    assert reply.json()["error_type"] == "overloaded"
    assert int(reply.headers["Retry-After"]) >= 1
    # The disconnects freed both slots: the server keeps serving.
    deadline = time.monotonic() + 15
    while (status := _post(crowded, "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).status_code) \
            == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_body_over_6_mib_is_413(limited: RunningServer) -> None:
    reply = httpx.post(limited.url("/invocations"), content=b'{"inputs": "' + b"x" * (6 * 1024 * 1024 + 10) + b'"}',
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 413
    assert reply.json()["detail"]


@pytest.mark.parametrize("path, body, status", [
    ("/v1/chat/completions", b"{not json", 400),
    ("/generate", b"{not json", 422),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 7}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "n": 0}', 400),
    ("/v1/completions", b'{"prompt": "hi", "model": "no-such-model"}', 404),
    ("/generate", b'{"inputs": "hi", "parameters": {"temperature": -1}}', 422),
    ("/generate", b'{"inputs": "hi", "parameters": {"top_p": 1.0}}', 422),
    ("/invocations", b'{"question": "hi"}', 422),
    ("/generate", b'["a", "list"]', 422),
])
def test_bad_input_is_a_4xx_json_reason_never_a_5xx(limited: RunningServer, path: str, body: bytes,
                                                    status: int) -> None:
    reply = httpx.post(limited.url(path), content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert reply.status_code == status, reply.text
    assert reply.json()["detail"]
    assert "Traceback" not in reply.text
    assert _post(limited, "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).status_code == 200
