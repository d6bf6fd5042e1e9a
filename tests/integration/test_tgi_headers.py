"""TGI's x-* response headers on the shared server: present, measured, and consistent with the body."""

from __future__ import annotations

import httpx

from .conftest import RunningServer

TIMINGS = ("x-total-time", "x-validation-time", "x-inference-time", "x-time-per-token")


def test_whole_replies_carry_tgi_headers_that_agree_with_details(berth_server: RunningServer) -> None:
    inputs = "The quick brown fox"
    prompt_tokens = len(httpx.post(berth_server.url("/tokenize"), json={"inputs": inputs}, timeout=30).json())
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 7, "details": True, "do_sample": False}}
    for path in ("/generate", "/invocations", "/"):
        reply = httpx.post(berth_server.url(path), json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        details = (data[0] if isinstance(data, list) else data)["details"]
        headers = reply.headers
        assert int(headers["x-generated-tokens"]) == details["generated_tokens"] > 0
        assert int(headers["x-prompt-tokens"]) == prompt_tokens
        assert int(headers["x-compute-characters"]) == len(inputs)
        assert headers["x-compute-type"] in ("cpu", "cuda", "gpu")
        total, validation, inference, per_token = (int(headers[name]) for name in TIMINGS)
        assert validation + inference <= total + 1  # whole milliseconds, each rounded down
        assert per_token == int(inference / details["generated_tokens"]) or abs(
            per_token - inference / details["generated_tokens"]) <= 1
        assert abs(float(headers["x-compute-time"]) * 1000 - total) <= 1
        assert "x-queue-time" not in headers  # not measurable apart from prefill: left out, not invented


def test_streams_carry_only_what_is_known_before_the_first_byte(berth_server: RunningServer) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
    with httpx.stream("POST", berth_server.url("/generate_stream"), json=body, timeout=60) as reply:
        assert reply.status_code == 200
        reply.read()
        assert reply.headers["x-compute-characters"] == "5" and "x-compute-type" in reply.headers
        assert "x-generated-tokens" not in reply.headers and "x-total-time" not in reply.headers
