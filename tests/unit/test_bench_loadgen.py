"""bench.loadgen against a tiny stdlib fake SSE server: usage counting, TTFT, errors."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.loadgen import LoadConfig, percentile, run_load

FIRST_TOKEN_DELAY_S = 0.15
CHUNKS = 4
USAGE_TOKENS = 7  # differs from CHUNKS so the test can tell which one was counted


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    send_usage = True

    def log_message(self, *args: object) -> None:
        """Keep test output quiet."""

    def do_POST(self) -> None:
        """Chat completions: stream CHUNKS deltas after a delay; 'fail' in the prompt -> HTTP 500."""
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "fail" in body["messages"][0]["content"]:
            payload = b'{"error": "boom"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        time.sleep(FIRST_TOKEN_DELAY_S)
        for i in range(CHUNKS):
            chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        if self.send_usage and body.get("stream_options", {}).get("include_usage"):
            usage = {"choices": [], "usage": {"completion_tokens": USAGE_TOKENS, "prompt_tokens": 3}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    """A fake OpenAI SSE server in a thread; yields its base URL and handler class (to toggle usage)."""
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _run(cfg: LoadConfig):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(run_load(cfg), timeout=20))


def test_counts_tokens_from_usage_and_measures_ttft(server: tuple[str, type[_Handler]]) -> None:
    url, _ = server
    res = _run(LoadConfig(url=url, model="m", concurrency=2, requests=4, max_tokens=8, timeout_s=10))
    assert res.errors == 0 and res.completed == 4
    assert res.token_count_source == "usage"
    assert res.output_tokens == 4 * USAGE_TOKENS
    assert res.ttft_p50_s is not None and FIRST_TOKEN_DELAY_S <= res.ttft_p50_s < FIRST_TOKEN_DELAY_S + 1.0
    assert res.latency_p50_s is not None and res.latency_p50_s >= res.ttft_p50_s
    assert res.output_tok_s > 0


def test_falls_back_to_content_chunks_without_usage(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.send_usage = False
    res = _run(LoadConfig(url=url, model="m", concurrency=1, requests=2, timeout_s=10))
    assert res.errors == 0
    assert res.token_count_source == "content-chunks"
    assert res.output_tokens == 2 * CHUNKS


def test_counts_errors(server: tuple[str, type[_Handler]]) -> None:
    url, _ = server
    res = _run(LoadConfig(url=url, model="m", concurrency=2, requests=3, prompt="please fail", timeout_s=10))
    assert res.completed == 0 and res.errors == 3
    assert res.first_errors and res.first_errors[0].startswith("HTTP 500")
    assert res.output_tok_s == 0


def test_unreachable_server_is_an_error_not_a_hang() -> None:
    res = _run(LoadConfig(url="http://127.0.0.1:9", model="m", concurrency=1, requests=1, timeout_s=5))
    assert res.errors == 1 and res.completed == 0


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)
