"""Embedding and rerank models launched through Xinference's API, used with xinference-client and openai."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from berth.errors import InvokeError
from berth.predictor import HttpPredictor
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
        _routes_through_invocations(server, emb, rr)
    finally:
        client.terminate_model(emb)
        client.terminate_model(rr)
        client.unregister_model("embedding", "emb-tiny")
        client.unregister_model("rerank", "rr-tiny")


def _routes_through_invocations(server: RunningServer, emb: str, rr: str) -> None:
    """SageMaker's custom attributes `route=...` (the SDK's predict(route=)) equal the direct routes' replies."""
    predictor = HttpPredictor(server.base_url, "berth")
    embed = {"model": emb, "input": ["hello world", "second"], "encoding_format": "float"}
    assert predictor.predict(embed, route="/v1/embeddings") == httpx.post(server.url("/v1/embeddings"),
                                                                           json=embed, timeout=30).json()
    rerank = {"model": rr, "query": "cat", "documents": ["a cat", "the dog"], "return_documents": True}
    routed = predictor.predict(rerank, route="/v1/rerank")
    direct = httpx.post(server.url("/v1/rerank"), json=rerank, timeout=30).json()
    assert {k: v for k, v in routed.items() if k != "id"} == {k: v for k, v in direct.items() if k != "id"}
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    routed = predictor.predict(chat, route="/v1/chat/completions")
    direct = httpx.post(server.url("/v1/chat/completions"), json=chat, timeout=30).json()
    assert routed["choices"] == direct["choices"] and routed["usage"] == direct["usage"]
    with pytest.raises(InvokeError) as refused:  # launching a model changes state: not without the operator
        predictor.predict({"model_uid": "x"}, route="/v1/models")
    assert refused.value.status == 403
    predictor.delete()


def test_minilm_matches_sentence_transformers(server: RunningServer, minilm_model: Path) -> None:
    """Real all-MiniLM-L6-v2, registered and launched: vectors equal sentence-transformers' own."""
    from sentence_transformers import SentenceTransformer

    texts = ["The capital of France is Paris.", "A man is playing a guitar.",
             "Continuous batching keeps the accelerator busy. " * 40, "x"]  # the long one passes 256 tokens
    client = RESTfulClient(server.base_url)
    registration = json.loads(_encoder_registration("embedding", "minilm-custom", minilm_model))
    registration.update(dimensions=384, max_tokens=512)
    client.register_model("embedding", json.dumps(registration), False)
    uid = client.launch_model("minilm-custom", model_type="embedding", model_uid="minilm")
    try:
        reference = SentenceTransformer(str(minilm_model), device="cpu").encode(texts, convert_to_numpy=True)
        oai = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        got = oai.embeddings.create(model=uid, input=texts, encoding_format="float")
        assert [len(d.embedding) for d in got.data] == [384] * len(texts)
        for item, expected in zip(got.data, reference, strict=True):
            assert _cosine(item.embedding, list(expected)) >= 0.999
            assert sum(v * v for v in item.embedding) == pytest.approx(1.0, rel=1e-4)  # its Normalize module
        short = oai.embeddings.create(model=uid, input=texts[:2], dimensions=64)
        for item, expected in zip(short.data, reference, strict=False):
            truncated = list(expected[:64])
            assert len(item.embedding) == 64
            assert sum(v * v for v in item.embedding) == pytest.approx(1.0, rel=1e-4)
            assert _cosine(item.embedding, truncated) >= 0.999
        too_many = httpx.post(server.url("/v1/embeddings"), json={"model": uid, "input": "x", "dimensions": 385},
                              timeout=30)
        assert too_many.status_code == 400 and "dimensions" in too_many.json()["detail"]
    finally:
        client.terminate_model(uid)
        client.unregister_model("embedding", "minilm-custom")


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return float(dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5)))
