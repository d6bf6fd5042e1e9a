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
from berth_server.checkpoint import load_tokenizer
from berth_server.engines.base import EngineLoadInfo
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 512


@dataclass
class _Job:
    """One request waiting for the next batch: its rows and where its answer goes."""

    rows: list[Any]  # texts (embed) or (query, document) pairs (rerank)
    normalize: bool
    dimensions: int | None
    future: asyncio.Future[tuple[list[Any], int]] = field(repr=False)


# sentence-transformers' Pooling modes, in the order its Pooling.forward concatenates them.
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "lasttoken")
_ST_MODULE_PREFIX = "sentence_transformers.models."


@dataclass(frozen=True)
class Pipeline:
    """How a sentence-transformers model turns hidden states into its vector (modules.json, 1_Pooling, Normalize)."""

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_seq_length: int | None = None
    lower_case: bool = False
    source: str = "no sentence-transformers files: mean pooling, L2-normalised"


def read_pipeline(model_dir: Path) -> Pipeline:
    """Read pooling, normalisation and input length from the model's sentence-transformers files.

    Without modules.json the model is a bare transformers encoder: mean pooling and L2
    normalisation (what most embedding models use), said so in `source`. A module Berth does
    not run (Dense, ...) is refused, since skipping it would return different vectors.
    """
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        # bge-style folders may carry 1_Pooling without modules.json; read it when present.
        pooling_dir = model_dir / "1_Pooling"
        if (pooling_dir / "config.json").is_file():
            return Pipeline(pooling=_pooling_modes(pooling_dir), source="1_Pooling/config.json, L2-normalised")
        return Pipeline()
    modules = json.loads(modules_file.read_text())
    pooling: tuple[str, ...] = ("cls",)  # a Transformer module alone yields its CLS token embedding
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).removeprefix(_ST_MODULE_PREFIX)
        if kind == "Pooling":
            pooling = _pooling_modes(model_dir / module.get("path", ""))
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise InvalidRequest(f"{model_dir} uses the sentence-transformers module {module.get('type')!r}, "
                                 "which Berth's encoder does not run (it runs Transformer, Pooling, Normalize)")
    config: dict[str, Any] = {}
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        config = json.loads(st_config.read_text())
    return Pipeline(pooling=pooling, normalize=normalize, max_seq_length=config.get("max_seq_length"),
                    lower_case=bool(config.get("do_lower_case")), source=str(modules_file))


def _pooling_modes(pooling_dir: Path) -> tuple[str, ...]:
    """The enabled modes of a sentence-transformers Pooling module; refuses those Berth does not compute."""
    config = json.loads((pooling_dir / "config.json").read_text())
    enabled = [key.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
               for key, on in config.items() if key.startswith("pooling_mode_") and on]
    unknown = sorted(set(enabled) - set(_POOLING_MODES))
    if unknown:
        raise InvalidRequest(f"{pooling_dir}: pooling mode {', '.join(unknown)} is not supported by Berth's encoder")
    modes = tuple(mode for mode in _POOLING_MODES if mode in enabled)
    return modes or ("mean",)


def pool(hidden: Any, mask: Any, modes: tuple[str, ...]) -> Any:
    """Pool token states as sentence-transformers' Pooling does (modes concatenated in its order)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(hidden.masked_fill(weights == 0, -1e9).max(dim=1).values)
        elif mode == "mean":
            parts.append((hidden * weights).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len":
            parts.append((hidden * weights).sum(dim=1) / counts.sqrt())
        else:  # lasttoken: the last non-padding position of each row (right padding)
            last = mask.sum(dim=1).clamp(min=1) - 1
            parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class EncoderService:
    """Serves one embedding or rerank model; a batching task runs the forward passes off the event loop."""

    def __init__(self, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> None:
        self.config = config
        self.model_dir = model_dir
        self.settings = settings
        self.kind = config.model_type  # "embedding" or "rerank"
        self.max_batch = max(1, settings.max_batch_size)
        self.pipeline = read_pipeline(model_dir) if self.kind == "embedding" else Pipeline()
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
        from transformers import AutoModel, AutoModelForSequenceClassification

        wanted = self.settings.device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if wanted in ("auto", "") else wanted
        self.device = torch.device(device)
        trust = self.config.trust_remote_code
        self.tokenizer = load_tokenizer(Path(self.model_dir), trust)
        loader = AutoModelForSequenceClassification if self.kind == "rerank" else AutoModel
        self.model = loader.from_pretrained(self.model_dir, trust_remote_code=trust).to(self.device).eval()
        model_config = self.model.config
        positions = getattr(model_config, "max_position_embeddings", None) or DEFAULT_MAX_TOKENS
        # sentence-transformers truncates at its own max_seq_length (256 for all-MiniLM-L6-v2).
        self.max_tokens = min(self.max_tokens, positions, self.pipeline.max_seq_length or positions)
        if self.kind == "embedding":
            hidden = int(getattr(model_config, "hidden_size", 0))
            self.dimensions = (hidden * len(self.pipeline.pooling)) or self.dimensions
            log.info("embedding: pooling %s, normalise %s, max %d tokens (from %s)", "+".join(self.pipeline.pooling),
                     self.pipeline.normalize, self.max_tokens, self.pipeline.source)
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
        if message.dimensions is not None and not 0 < message.dimensions <= (self.dimensions or 0):
            raise InvalidRequest(f"dimensions must be between 1 and {self.dimensions} for model "
                                 f"'{self.config.uid}', not {message.dimensions}", param="dimensions")
        normalize = self.pipeline.normalize if message.normalize is None else message.normalize
        vectors, tokens = await self._submit(list(message.texts), normalize, message.dimensions)
        return ipc.Embedded(message.request_id, vectors, tokens)

    async def rerank(self, message: ipc.Rerank) -> ipc.Reranked:
        """Relevance scores (0..1) of each document for the query, in input order."""
        if self.kind != "rerank":
            raise InvalidRequest(f"model '{self.config.uid}' is a {self.kind} model; it does not rerank")
        if not message.documents:
            raise InvalidRequest("documents must not be empty", param="documents")
        scores, tokens = await self._submit([(message.query, d) for d in message.documents], False, None)
        return ipc.Reranked(message.request_id, scores, tokens)

    async def _submit(self, rows: list[Any], normalize: bool, dimensions: int | None) -> tuple[list[Any], int]:
        if self._wake is None:
            raise InvalidRequest("the encoder is not started")
        job = _Job(rows, normalize, dimensions, asyncio.get_running_loop().create_future())
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
        shapes = [(job.normalize, job.dimensions) for job in batch for _ in job.rows]
        try:
            outputs, counts = await asyncio.to_thread(self._forward, rows, shapes)
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

    def _forward(self, rows: list[Any], shapes: list[tuple[bool, int | None]]) -> tuple[list[Any], list[int]]:
        """One forward pass over every row (blocking; runs in a worker thread); shapes: (normalize, dimensions)."""
        import torch

        if self.kind == "rerank":
            queries, documents = [q for q, _ in rows], [d for _, d in rows]
            encoded = self.tokenizer(queries, documents, padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
        else:
            texts = [text.lower() for text in rows] if self.pipeline.lower_case else rows
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
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
            pooled = pool(hidden, mask, self.pipeline.pooling)
        vectors: list[Any] = []
        for row, (normalize, dimensions) in zip(pooled, shapes, strict=True):
            if normalize:
                row = torch.nn.functional.normalize(row, dim=-1)
            if dimensions is not None:  # Matryoshka: the first N components, re-normalised
                row = torch.nn.functional.normalize(row[:dimensions], dim=-1)
            vectors.append(row.cpu().tolist())
        return vectors, counts

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
