"""Embedding and rerank models on transformers, with concurrent requests coalesced into one forward pass."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth_server import ipc
from berth_server.engines.base import EngineLoadInfo
from berth_server.errors import InvalidRequest
from berth_server.models.launch import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 512


@dataclass
class _Job:
    """One request waiting for the next batch: its rows and where its answer goes."""

    rows: list[Any]  # texts (embed) or (query, document) pairs (rerank)
    normalize: bool
    future: asyncio.Future[tuple[list[Any], int]] = field(repr=False)


def _pooling_mode(model_dir: Path) -> str:
    """'cls' or 'mean', from sentence-transformers' 1_Pooling/config.json (bge uses CLS); mean otherwise."""
    try:
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "mean"
    return "cls" if pooling.get("pooling_mode_cls_token") else "mean"


class EncoderService:
    """Serves one embedding or rerank model; a batching task runs the forward passes off the event loop."""

    def __init__(self, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> None:
        self.config = config
        self.model_dir = model_dir
        self.settings = settings
        self.kind = config.model_type  # "embedding" or "rerank"
        self.max_batch = max(1, settings.max_batch_size)
        self.pooling = _pooling_mode(model_dir)
        self._pending: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.tokenizer: Any = None
        self.model: Any = None
        self.device: Any = None
        self.dimensions: int | None = config.dimensions
        self.max_tokens = config.context_length or DEFAULT_MAX_TOKENS

    def _load(self) -> EngineLoadInfo:
        """Load tokenizer and weights (blocking)."""
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        wanted = self.settings.device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if wanted in ("auto", "") else wanted
        self.device = torch.device(device)
        trust = self.config.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust)
        loader = AutoModelForSequenceClassification if self.kind == "rerank" else AutoModel
        self.model = loader.from_pretrained(self.model_dir, trust_remote_code=trust).to(self.device).eval()
        model_config = self.model.config
        positions = getattr(model_config, "max_position_embeddings", None) or DEFAULT_MAX_TOKENS
        self.max_tokens = min(self.max_tokens, positions)
        if self.kind == "embedding":
            self.dimensions = int(getattr(model_config, "hidden_size", 0)) or self.dimensions
        return EngineLoadInfo(engine="transformers-encoder", device=str(self.device),
                              dtype=str(self.model.dtype).removeprefix("torch."), max_model_len=self.max_tokens,
                              max_batch_size=self.max_batch, extra={"dimensions": self.dimensions})

    async def start(self) -> EngineLoadInfo:
        """Load, then start the batching task."""
        info = await asyncio.to_thread(self._load)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._batch_loop())
        return info

    def describe(self) -> dict[str, Any]:
        """Facts the frontend shows (dimensions, input limit)."""
        return {"dimensions": self.dimensions, "max_tokens": self.max_tokens, "kind": self.kind}

    async def embed(self, message: ipc.Embed) -> ipc.Embedded:
        """Embed texts (batched with whatever else is waiting)."""
        if self.kind != "embedding":
            raise InvalidRequest(f"model '{self.config.uid}' is a {self.kind} model; it does not embed")
        if not message.texts:
            raise InvalidRequest("input must not be empty", param="input")
        vectors, tokens = await self._submit(list(message.texts), message.normalize)
        return ipc.Embedded(message.request_id, vectors, tokens)

    async def rerank(self, message: ipc.Rerank) -> ipc.Reranked:
        """Relevance scores (0..1) of each document for the query, in input order."""
        if self.kind != "rerank":
            raise InvalidRequest(f"model '{self.config.uid}' is a {self.kind} model; it does not rerank")
        if not message.documents:
            raise InvalidRequest("documents must not be empty", param="documents")
        scores, tokens = await self._submit([(message.query, d) for d in message.documents], False)
        return ipc.Reranked(message.request_id, scores, tokens)

    async def _submit(self, rows: list[Any], normalize: bool) -> tuple[list[Any], int]:
        if self._wake is None:
            raise InvalidRequest("the encoder is not started")
        job = _Job(rows, normalize, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    async def _batch_loop(self) -> None:
        """Take every waiting job (up to max_batch rows), run them as one forward pass, answer each."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[_Job] = []
                rows = 0
                while self._pending and (not batch or rows + len(self._pending[0].rows) <= self.max_batch):
                    job = self._pending.pop(0)
                    batch.append(job)
                    rows += len(job.rows)
                await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        normalize = [job.normalize for job in batch for _ in job.rows]
        try:
            outputs, counts = await asyncio.to_thread(self._forward, rows, normalize)
        except Exception as exc:
            log.exception("encoder forward pass failed")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in batch:
            end = start + len(job.rows)
            if not job.future.done():
                job.future.set_result((outputs[start:end], int(sum(counts[start:end]))))
            start = end

    def _forward(self, rows: list[Any], normalize: list[bool]) -> tuple[list[Any], list[int]]:
        """One forward pass over every row (blocking; runs in a worker thread)."""
        import torch

        if self.kind == "rerank":
            queries, documents = [q for q, _ in rows], [d for _, d in rows]
            encoded = self.tokenizer(queries, documents, padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
        else:
            encoded = self.tokenizer(rows, padding=True, truncation=True, max_length=self.max_tokens,
                                     return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        mask = encoded["attention_mask"]
        counts = [int(n) for n in mask.sum(dim=1).tolist()]
        with torch.inference_mode():
            if self.kind == "rerank":
                logits = self.model(**encoded).logits.float()
                # One logit: a relevance logit (bge-reranker); squash to 0..1 as Cohere-style scores are.
                scores = torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
                return [float(s) for s in scores.tolist()], counts
            hidden = self.model(**encoded).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            wanted = torch.tensor(normalize, device=pooled.device).unsqueeze(-1)
            pooled = torch.where(wanted, torch.nn.functional.normalize(pooled, dim=-1), pooled)
        return pooled.cpu().tolist(), counts

    async def shutdown(self) -> None:
        """Stop the batching task and fail anything still waiting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(InvalidRequest("the model is shutting down"))
        self._pending.clear()


def create_encoder_service(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> EncoderService:
    """Build (not load) the encoder service for an embedding or rerank model; start() loads it."""
    if config.model_type not in ("embedding", "rerank"):
        raise InvalidRequest(f"model '{config.uid}' is {config.model_type}; the encoder serves embedding/rerank")
    return EncoderService(config, model_dir, settings)
