"""Berth on vLLM against Berth on transformers, same model, same requests: usage counts must agree.

Runs when the shared server is the vLLM one; a transformers server is started for the comparison.
(Greedy token equality between the engines is checked in float32 in tests/integration/test_engine_vllm.py;
here vLLM runs its default CPU dtype, so only counts, which do not depend on the tokens, are compared.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer, launch_serve

MAX_TOKENS = 6
MESSAGES = [{"role": "user", "content": "Tell me a story about a boat."}]


@pytest.fixture(scope="module")
def transformers_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = launch_serve(tiny_model, tmp_path_factory.mktemp("berth-contract-tf"), engine="transformers",
                          env={"BERTH_MODEL_UID": "tiny"})
    yield server
    server.stop()


@pytest.fixture
def pair(berth_server: RunningServer, request: pytest.FixtureRequest) -> tuple[RunningServer, RunningServer]:
    """(vLLM server, transformers server); skipped on the transformers run of the shared fixture."""
    if berth_server.engine != "vllm":
        pytest.skip("compares the vLLM server with a transformers one")
    return berth_server, request.getfixturevalue("transformers_server")


def _post(server: RunningServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.url(path), json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _stream_usage(server: RunningServer, body: dict[str, Any]) -> dict[str, Any]:
    import json

    usage: dict[str, Any] = {}
    with httpx.stream("POST", server.url("/v1/chat/completions"), timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage


@pytest.mark.vllm
@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "Once upon a time"}),
])
def test_usage_agrees_between_engines(pair: tuple[RunningServer, RunningServer], path: str,
                                      body: dict[str, Any]) -> None:
    request = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, **body}
    vllm_usage, tf_usage = (_post(server, path, request)["usage"] for server in pair)
    assert vllm_usage == tf_usage and vllm_usage["completion_tokens"] == MAX_TOKENS


@pytest.mark.vllm
def test_streamed_usage_and_tgi_details_agree(pair: tuple[RunningServer, RunningServer]) -> None:
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    vllm_usage, tf_usage = (_stream_usage(server, chat) for server in pair)
    assert vllm_usage == tf_usage and vllm_usage["completion_tokens"] == MAX_TOKENS
    tgi = {"inputs": "The sea", "parameters": {"max_new_tokens": MAX_TOKENS, "details": True,
                                               "decoder_input_details": True, "top_n_tokens": 2}}
    vllm_details, tf_details = (_post(server, "/generate", tgi)["details"] for server in pair)
    assert vllm_details["generated_tokens"] == tf_details["generated_tokens"]
    assert [t["id"] for t in vllm_details["prefill"]] == [t["id"] for t in tf_details["prefill"]]
    assert len(vllm_details["tokens"]) == len(tf_details["tokens"]) and all(
        len(t) == 2 for t in vllm_details["top_tokens"])
