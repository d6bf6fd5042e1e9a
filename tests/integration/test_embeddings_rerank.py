"""Embedding and rerank models launched through Xinference's API, used with xinference-client and openai."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from .conftest import RunningServer, launch_serve


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose default model is the tiny LLM; encoders are launched next to it."""
    running = launch_serve(tiny_model, tmp_path_factory.mktemp("encoders"), engine="transformers",
                           env={"BERTH_MODEL_UID": "tiny"})
    yield running
    running.stop()


def _encoder_registration(kind: str, name: str, model_dir: Path) -> str:
    spec = {"model_format": "pytorch", "model_hub": "huggingface", "model_id": None,
            "model_uri": f"file://{model_dir}", "model_revision": None, "quantization": "none"}
    extra = {"dimensions": 64, "max_tokens": 512} if kind == "embedding" else {"type": "normal", "max_tokens": 512}
    return json.dumps({"version": 2, "model_name": name, "language": ["en"], **extra, "model_specs": [spec],
                       "virtualenv": {"packages": []}, "is_builtin": False})


def test_embeddings_and_rerank(server: RunningServer, tiny_embedding_model: Path,
                               tiny_rerank_model: Path) -> None:
    client = RESTfulClient(server.base_url)
    client.register_model("embedding", _encoder_registration("embedding", "emb-tiny", tiny_embedding_model), False)
    client.register_model("rerank", _encoder_registration("rerank", "rr-tiny", tiny_rerank_model), False)
    emb = client.launch_model("emb-tiny", model_type="embedding", model_uid="emb")
    rr = client.launch_model("rr-tiny", model_type="rerank", model_uid="rr")
    try:
        assert client.describe_model(emb)["model_type"] == "embedding"
        handle = client.get_model(emb)
        result = handle.create_embedding(["hello world", "second text"])
        assert len(result["data"]) == 2 and len(result["data"][0]["embedding"]) == 64
        assert result["usage"]["prompt_tokens"] > 0
        oai = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        vectors = oai.embeddings.create(model=emb, input="hello world")  # base64 on the wire
        assert vectors.data[0].embedding == pytest.approx(result["data"][0]["embedding"], abs=1e-4)
        assert vectors.usage.prompt_tokens > 0
        ranked = client.get_model(rr).rerank(["a cat", "the dog", "numbers"], "cat", top_n=2,
                                             return_documents=True)
        results = ranked["results"]
        assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
        assert results[0]["document"]["text"] in ("a cat", "the dog", "numbers")
        wrong = httpx.post(server.url("/v1/rerank"), json={"model": emb, "query": "q", "documents": ["d"]}, timeout=30)
        assert wrong.status_code == 400 and "does not rerank" in wrong.json()["detail"]
    finally:
        client.terminate_model(emb)
        client.terminate_model(rr)
        client.unregister_model("embedding", "emb-tiny")
        client.unregister_model("rerank", "rr-tiny")
