"""Encoder service: embeddings and rerank on tiny local encoders, with concurrent requests batched."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from berth_server import ipc
from berth_server.demo_model import RECIPES, build
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.encoder_service import create_encoder_service
from berth_server.settings import Settings

from tests.conftest import building

CACHE = Path(__file__).resolve().parents[2] / ".berth-home" / "test-models"


@pytest.fixture(scope="module")
def embedding_dir() -> Path:
    with building(CACHE / "tiny-embedding"):
        return build(RECIPES["tiny-embedding"], CACHE / "tiny-embedding")


@pytest.fixture(scope="module")
def rerank_dir() -> Path:
    with building(CACHE / "tiny-rerank"):
        return build(RECIPES["tiny-rerank"], CACHE / "tiny-rerank")


def _service(kind: str, model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = ModelLaunchConfig(uid=f"u-{kind}", source=str(model_dir), model_name=kind, model_type=kind)  # type: ignore[arg-type]
    return create_encoder_service(config, model_dir, Settings(home=tmp_path, device="cpu", max_batch_size=8))


def test_embed_batches_concurrent_requests(embedding_dir: Path, tmp_path: Path) -> None:
    async def run() -> None:
        service = _service("embedding", embedding_dir, tmp_path)
        info = await service.start()
        assert info.extra["dimensions"] == service.describe()["dimensions"] == 64
        calls = []
        forward = service._forward

        def counting(rows, normalize):  # type: ignore[no-untyped-def]
            calls.append(len(rows))
            return forward(rows, normalize)

        service._forward = counting  # type: ignore[method-assign]
        texts = ["hello world", "the quick brown fox", "x"]
        replies = await asyncio.gather(*(service.embed(ipc.Embed(request_id=str(i), texts=[t]))
                                         for i, t in enumerate(texts)))
        assert calls == [3]  # three requests arrived together: one forward pass
        for reply in replies:
            assert len(reply.vectors) == 1 and len(reply.vectors[0]) == 64
            assert math.isclose(sum(v * v for v in reply.vectors[0]), 1.0, rel_tol=1e-4)
            assert reply.prompt_tokens > 0
        alone = await service.embed(ipc.Embed(request_id="a", texts=["hello world"]))
        assert alone.vectors[0] == pytest.approx(replies[0].vectors[0], abs=1e-5)  # padding does not change it
        raw = await service.embed(ipc.Embed(request_id="b", texts=["hello world"], normalize=False))
        assert not math.isclose(sum(v * v for v in raw.vectors[0]), 1.0, rel_tol=1e-3)
        with pytest.raises(InvalidRequest):
            await service.rerank(ipc.Rerank(request_id="r", query="q", documents=["d"]))
        await service.shutdown()

    asyncio.run(run())


def test_rerank_scores_in_input_order(rerank_dir: Path, tmp_path: Path) -> None:
    async def run() -> None:
        service = _service("rerank", rerank_dir, tmp_path)
        await service.start()
        docs = ["a cat sat", "the dog ran far away", "numbers 1 2 3"]
        reply = await service.rerank(ipc.Rerank(request_id="r", query="cat", documents=docs))
        assert len(reply.scores) == 3 and all(0.0 <= s <= 1.0 for s in reply.scores)
        one = await service.rerank(ipc.Rerank(request_id="s", query="cat", documents=[docs[1]]))
        assert one.scores[0] == pytest.approx(reply.scores[1], abs=1e-5)
        with pytest.raises(InvalidRequest):
            await service.embed(ipc.Embed(request_id="e", texts=["x"]))
        with pytest.raises(InvalidRequest):
            await service.rerank(ipc.Rerank(request_id="t", query="cat", documents=[]))
        await service.shutdown()

    asyncio.run(run())


def test_pipeline_read_from_sentence_transformers_files(minilm_model: Path, tmp_path: Path) -> None:
    from berth_server.model_process.encoder_service import read_pipeline

    minilm = read_pipeline(minilm_model)
    assert (minilm.pooling, minilm.normalize, minilm.max_seq_length) == (("mean",), True, 256)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (tmp_path / "modules.json").write_text(
        '[{"type": "sentence_transformers.models.Transformer", "path": ""},'
        ' {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]')
    bare = read_pipeline(tmp_path)
    assert (bare.pooling, bare.normalize) == (("cls",), False)  # no Normalize module: raw vectors
    (tmp_path / "modules.json").write_text('[{"type": "sentence_transformers.models.Dense", "path": "2_Dense"}]')
    with pytest.raises(InvalidRequest, match="Dense"):
        read_pipeline(tmp_path)
