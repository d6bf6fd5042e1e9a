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


def test_past_max_concurrent_requests_is_429_overloaded_with_retry_after(limited: RunningServer) -> None:
    started = threading.Barrier(3)
    first_events: list[int] = []

    def hold_a_slot() -> None:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 25}, "stream": True}
        with httpx.stream("POST", limited.url("/generate_stream"), json=body, timeout=60) as reply:
            lines = reply.iter_lines()
            first_events.append(reply.status_code)
            next(lines)  # the first token: the slot is taken
            started.wait(timeout=30)
            time.sleep(1.0)  # keep the slot while the third request arrives
            for _ in lines:
                pass

    holders = [threading.Thread(target=hold_a_slot) for _ in range(2)]
    for holder in holders:
        holder.start()
    started.wait(timeout=30)
    reply = _post(limited, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    for holder in holders:
        holder.join(timeout=60)
    assert first_events == [200, 200]
    assert reply.status_code == 429
    assert reply.json()["error_type"] == "overloaded"
    assert int(reply.headers["Retry-After"]) >= 1
    # The slots are free again: the server keeps serving.
    assert _post(limited, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}).status_code == 200


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
