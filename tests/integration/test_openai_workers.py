"""Two gunicorn workers with an API key: auth on the real server, and /metrics aggregating every worker."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest


def test_two_workers_api_key_and_shared_metrics(start_server, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tiny_model, env={"BERTH_MODEL_UID": "tiny", "BERTH_WORKERS": "2",
                                           "BERTH_API_KEY": "sekret"})
    anonymous = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0, timeout=60)
    with anonymous, pytest.raises(openai.AuthenticationError):
        anonymous.models.list()  # closed after: an idle keep-alive connection delays shutdown
    # A new connection each time (httpx.post), so both workers get some of them.
    for _ in range(6):
        reply = httpx.post(server.url("/v1/completions"), headers={"Authorization": "Bearer sekret"},
                           json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
    # With an API key set, /metrics needs it too (unless BERTH_METRICS_PUBLIC=true).
    assert httpx.get(server.url("/metrics"), timeout=30).status_code == 401
    metrics = httpx.get(server.url("/metrics"), headers={"Authorization": "Bearer sekret"}, timeout=30).text
    match = re.search(r'berth_http_requests_total\{method="POST",route="/v1/completions",status="200"\} ([0-9.]+)',
                      metrics)
    assert match and float(match.group(1)) == 6.0, metrics[-3000:]
    assert re.search(r'berth_generated_tokens_total\{model="tiny"\} ([0-9.]+)', metrics)
