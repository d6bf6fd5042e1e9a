"""The transformers engine: an AutoModelForCausalLM behind our own continuous-batching loop.

A dedicated thread owns the model and one left-padded KV cache (transformers_batch.KVBatch).
Each iteration decodes one token for every running row, then prefills the newcomers as one batch
and merges them into the running cache, so a request never waits for the batch to drain.
Steps reach each request's asyncio.Queue through loop.call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_server.engines.base import Engine, EngineFinish, EngineLoadInfo, EngineRequest, EngineStep
from berth_server.errors import GenerationFailed, InvalidRequest
from berth_server.models.launch import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

Emit = Callable[[EngineStep | BaseException], None]


@dataclass(eq=False)
class _Slot:
    """One request inside the engine thread."""

    request: EngineRequest
    emit: Emit
    stop_ids: frozenset[int]
    sampler: Any = None  # sampling.RowSampler, built on the engine thread
    generated: int = 0
    last_token: int = 0
    finish: EngineFinish | None = None
    cancel: EngineFinish | None = None  # set from any thread: 'abort' emits a final step
    silent: bool = False  # the consumer has gone: emit nothing more

    def send(self, item: EngineStep | BaseException) -> None:
        """Deliver to the request's queue; a closed event loop only loses this request's messages."""
        if self.silent:
            return
        try:
            self.emit(item)
        except RuntimeError:
            self.silent = True
            self.cancel = "abort"


class TransformersEngine(Engine):
    """Continuous batching around model.forward, with per-request sampling, seeds and logprobs."""

    name = "transformers"

    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings):
        self.model_dir = Path(model_dir)
        self.config = config
        self.settings = settings
        self.max_batch_size = max(1, settings.max_batch_size)
        self.max_model_len = 0
        self.vocab_size = 0
        self.model: Any = None
        self.device: Any = None
        self.cpu_threads = 0  # intra-op threads of the loop thread on CPU; 0 leaves torch's default
        self._cond = threading.Condition()
        self._waiting: deque[_Slot] = deque()
        self._running: list[_Slot] = []
        self._by_id: dict[str, _Slot] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def cannot_serve(cls, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        """Why this engine cannot serve the model (select.py asks before loading), or None."""
        if config.model_type != "LLM":
            return f"it serves LLM models, not {config.model_type}"
        if config.tensor_parallel_size > 1:
            return "it does not do tensor parallelism"
        if config.quantization or settings.quantize:
            return "it does not quantize at load time (pre-quantized checkpoints load as they are)"
        if not (Path(model_dir) / "config.json").is_file():
            return f"{model_dir} has no config.json"
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        try:
            hf = AutoConfig.from_pretrained(model_dir, trust_remote_code=config.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - any failure here is the reason
            return f"cannot read its config: {exc}"
        remote = "AutoModelForCausalLM" in (getattr(hf, "auto_map", None) or {})
        if hf.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote:
            return f"model type {hf.model_type!r} is not a causal LM transformers knows"
        layer_types = getattr(hf.get_text_config(decoder=True), "layer_types", None) or []
        odd = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if odd:
            return f"its batching cache handles attention layers only, not {', '.join(odd)}"
        return None

    def _load(self) -> EngineLoadInfo:
        """Load weights (blocking): pick device and dtype, read the context length."""
        import torch
        from transformers import AutoModelForCausalLM

        wanted = self.settings.device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if wanted in ("auto", "") else wanted
        self.device = torch.device(device)
        dtype_name = (self.config.dtype or self.settings.dtype or "auto").lower()
        dtype: Any = getattr(torch, _DTYPES[dtype_name]) if dtype_name in _DTYPES else "auto"
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=dtype, trust_remote_code=self.config.trust_remote_code,
        )
        if dtype == "auto" and self.device.type == "cpu" and model.dtype == torch.float16:
            model = model.float()  # CPU kernels for fp16 are slow or missing; bf16 and fp32 are fine
        self.model = model.to(self.device).eval()
        text_config = model.config.get_text_config(decoder=True)
        self.vocab_size = int(text_config.vocab_size)
        self.max_model_len = int(
            self.config.context_length or self.config.max_total_tokens or self.settings.max_total_tokens
            or getattr(text_config, "max_position_embeddings", None) or 2048
        )
        if self.device.type == "cpu":
            self.cpu_threads = _cpu_threads(self.config.engine_args.get("num_threads"))
        return EngineLoadInfo(
            engine=self.name, device=str(self.device), dtype=str(model.dtype).removeprefix("torch."),
            max_model_len=self.max_model_len, max_batch_size=self.max_batch_size,
            extra={"cpu_threads": self.cpu_threads} if self.cpu_threads else {},
        )

    async def start(self) -> EngineLoadInfo:
        """Load the model off the event loop, then start the batching thread."""
        info = await asyncio.to_thread(self._load)
        from berth_server.engines.transformers_loop import run_loop

        self._thread = threading.Thread(target=run_loop, args=(self,), name="berth-transformers", daemon=True)
        self._thread.start()
        return info

    # ---- requests ------------------------------------------------------------------------------

    def _validate(self, request: EngineRequest) -> None:
        """Reject what would break the loop, before it reaches the batch."""
        from berth_server.engines.sampling import validate_sampling

        if self.model is None or self._stopping:
            raise GenerationFailed("the transformers engine is not running")
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequest("the prompt has no tokens", param="prompt")
        if any(not isinstance(t, int) or t < 0 or t >= self.vocab_size for t in prompt):
            raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        if len(prompt) >= self.max_model_len:
            raise InvalidRequest(
                f"the prompt has {len(prompt)} tokens; this model takes at most {self.max_model_len - 1}",
                param="prompt",
            )
        if request.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1", param="max_new_tokens")
        validate_sampling(request.sampling, self.vocab_size)
        if request.request_id in self._by_id:
            raise InvalidRequest(f"request id {request.request_id!r} is already running", param="request_id")

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineStep, None]:
        """Queue the request and yield its steps; closing early aborts it and frees its slot."""
        self._validate(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineStep | BaseException] = asyncio.Queue()

        def emit(item: EngineStep | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        stops = set(request.sampling.stop_token_ids)
        if not request.sampling.ignore_eos:
            stops |= request.stop_token_ids
        slot = _Slot(request=request, emit=emit, stop_ids=frozenset(stops))
        with self._cond:
            self._by_id[request.request_id] = slot
            self._waiting.append(slot)
            self._cond.notify()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._cancel(request.request_id, silent=True)

    def _cancel(self, request_id: str, silent: bool) -> None:
        """Mark a request for removal at the next step (the engine thread frees its row)."""
        with self._cond:
            slot = self._by_id.get(request_id)
            if slot is None:
                return
            slot.cancel = "abort"
            slot.silent = slot.silent or silent
            self._cond.notify()

    async def abort(self, request_id: str) -> None:
        """Stop a request now; its iterator ends with finish='abort'."""
        self._cancel(request_id, silent=False)

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        with self._cond:
            return len(self._running), len(self._waiting)

    async def shutdown(self) -> None:
        """Stop the loop, end every request with an error, and free the model."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
        with self._cond:
            pending = list(self._by_id.values())
            self._by_id.clear()
            self._waiting.clear()
            self._running = []
        for slot in pending:
            slot.send(GenerationFailed("the engine shut down"))
        self.model = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _cpu_threads(requested: object) -> int:
    """engine_args num_threads, else every core this process may use.

    On an otherwise idle 2-core machine two intra-op threads beat one (bench model, 16 streams:
    256 vs 190 tok/s; 1 stream: 39 vs 37). Under heavy contention from other processes one thread
    did better, so `num_threads` stays available for shared hosts.
    """
    if requested:
        return max(1, int(str(requested)))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
