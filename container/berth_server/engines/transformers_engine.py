"""The transformers engine: an AutoModelForCausalLM behind our own continuous-batching scheduler.

The engine loads the model and validates requests; transformers_scheduler.BatchScheduler owns the
slots, their lock and the batching thread. Steps reach each request's asyncio.Queue through
loop.call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from berth_server.checkpoint import capped_length
from berth_server.engines.base import Engine, EngineLoadInfo, EngineRequest, EngineStep
from berth_server.engines.cpus import usable_cpus
from berth_server.engines.facts import TRANSFORMERS
from berth_server.errors import GenerationFailed, InvalidRequest, NotFound
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

class TransformersEngine(Engine):
    """Continuous batching around model.forward, with per-request sampling, seeds and logprobs."""

    name = TRANSFORMERS.name
    compiles_constraints = TRANSFORMERS.compiles_constraints

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
        self.scheduler: Any = None  # transformers_scheduler.BatchScheduler once started
        self.lora: Any = None  # lora_bank.LoraBank once started

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
        gguf = _gguf_file(Path(model_dir))
        if gguf is not None and "transformers" not in (config.engine, settings.engine):
            # Dequantizing costs 4-8x the file's memory and decodes far slower than llama.cpp.
            return "it loads GGUF files only when asked (BERTH_ENGINE=transformers), by dequantizing them"
        if gguf is None and not (Path(model_dir) / "config.json").is_file():
            return f"{model_dir} has no config.json"
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        try:
            where, extra = _load_args(Path(model_dir))
            hf = AutoConfig.from_pretrained(where, trust_remote_code=config.trust_remote_code, **extra)
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
        where, extra = _load_args(self.model_dir)
        if extra and dtype == "auto":
            dtype = torch.float32  # a GGUF file is dequantized: to float32 unless DTYPE says otherwise
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, trust_remote_code=self.config.trust_remote_code, **extra,
            **_attention_kwargs(where, extra, self.config.trust_remote_code),
        )
        if dtype == "auto" and self.device.type == "cpu" and model.dtype == torch.float16:
            model = model.float()  # CPU kernels for fp16 are slow or missing; bf16 and fp32 are fine
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            from berth_server.engines.packed_linear import pack_linear_weights

            pack_linear_weights(self.model)  # bfloat16 only: bit-identical, a quarter faster (packed_linear.py)
        text_config = model.config.get_text_config(decoder=True)
        self.vocab_size = int(text_config.vocab_size)
        # A server-wide MAX_TOTAL_TOKENS past the checkpoint's own context is capped by it.
        requested = self.config.context_length or self.config.max_total_tokens or self.settings.max_total_tokens
        self.max_model_len = int(capped_length(requested, self.model_dir)[0]
                                 or getattr(text_config, "max_position_embeddings", None) or 2048)
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
        from berth_server.engines.transformers_scheduler import (
            DEFAULT_PREFILL_TOKENS,
            BatchLimits,
            BatchScheduler,
        )

        limits = BatchLimits(
            max_batch_size=self.max_batch_size, max_model_len=self.max_model_len, vocab_size=self.vocab_size,
            prefill_tokens=self.settings.max_batch_prefill_tokens or DEFAULT_PREFILL_TOKENS,
            cpu_threads=self.cpu_threads,
        )
        from berth_server.engines.lora_bank import LoraBank

        lora = self.settings.lora
        self.lora = LoraBank(self.model, lora.max_loras, lora.max_lora_rank, lora.max_cpu_loras)
        tables = await asyncio.to_thread(self._kv_tables)
        pool = tables.pool
        info.extra.update(kv_cache_blocks=pool.num_blocks, kv_block_size=pool.block_size, kv_cache_bytes=pool.nbytes)
        self.scheduler = BatchScheduler(self.model, self.device, limits, tables, self.lora)
        self.scheduler.start()
        return info

    def _kv_tables(self) -> Any:
        """The KV block pool, allocated once, sized by BERTH_KV_CACHE_GB, else BERTH_KV_CACHE_FRACTION, else 1 GiB."""
        from berth_server.engines.engine_settings import TransformersSettings
        from berth_server.engines.kv_forward import probe_shapes
        from berth_server.engines.kv_pool import block_bytes, pool_blocks
        from berth_server.engines.kv_tables import tables_for

        own = TransformersSettings.from_env()
        shapes = probe_shapes(self.model, self.device)
        size = own.kv_block_size
        # More than every row at full length plus as much again for cached prefixes is never used.
        most = 1 + 2 * self.max_batch_size * -(-self.max_model_len // size)
        gb = self.settings.kv_cache_gb
        blocks = pool_blocks(block_bytes(shapes, size, self.model.dtype), None if gb is None else int(gb * 2**30),
                             own.kv_cache_fraction, self.device, most)
        tables = tables_for(self.model, self.device, blocks, size, own.prefix_caching)
        log.info("KV pool: %d blocks of %d tokens (%.1f MiB)", blocks, size, tables.pool.nbytes / 2**20)
        return tables

    def pin_prefix(self, key: str, tokens: list[int], adapter: str | None = None) -> None:
        """Keep the cached blocks of these tokens (a session's conversation so far) under key, until
        unpin_prefix(key): they are never evicted meanwhile."""
        salt = self.lora.salt(adapter) if adapter else ""
        self.scheduler.with_pool(lambda tables: tables.pin(key, list(tokens), salt))

    def unpin_prefix(self, key: str) -> None:
        """Let go of the blocks pinned under key."""
        self.scheduler.with_pool(lambda tables: tables.unpin(key))

    async def close_session(self, session_id: str) -> None:
        """Let go of the blocks a closed or expired session's conversation kept cached."""
        if self.scheduler is not None:
            self.unpin_prefix(f"session:{session_id}")

    def pinned_sessions(self) -> int:
        """Sessions whose conversation the pool keeps now."""
        if self.scheduler is None:
            return 0
        return sum(key.startswith("session:") for key in self.scheduler.tables.pool.pinned_keys())

    def prefix_counts(self) -> tuple[int, int]:
        """(prompt tokens looked up in the prefix cache, tokens found) so far."""
        if self.scheduler is None:
            return (0, 0)
        pool = self.scheduler.tables.pool
        return pool.queries, pool.hits

    # ---- requests ------------------------------------------------------------------------------

    def check(self, request: EngineRequest) -> None:
        """Reject what would break the loop, before it reaches the batch."""
        from berth_server.engines.sampling import validate_sampling

        if self.scheduler is None or not self.scheduler.running:
            raise GenerationFailed("the transformers engine is not running")
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequest("the prompt has no tokens", param="prompt")
        if any(not isinstance(t, int) or t < 0 or t >= self.vocab_size for t in prompt):
            raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        most = min(self.max_model_len, self.scheduler.tables.capacity)  # the KV pool may be the bound
        if len(prompt) >= most:
            raise InvalidRequest(
                f"the prompt has {len(prompt)} tokens; this model takes at most {most - 1}",
                param="prompt",
            )
        if request.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1", param="max_new_tokens")
        validate_sampling(request.sampling, self.vocab_size)
        if request.adapter is not None:
            self.lora.check(request.adapter)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineStep, None]:
        """Queue the request and yield its steps; closing early aborts it and frees its slot."""
        from berth_server.engines.transformers_rows import Slot

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineStep | BaseException] = asyncio.Queue()

        def emit(item: EngineStep | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        stops = set(request.sampling.stop_token_ids)
        if not request.sampling.ignore_eos:
            stops |= request.stop_token_ids
        self.scheduler.submit(Slot(request=request, emit=emit, stop_ids=frozenset(stops)))
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
                self.scheduler.cancel(request.request_id, silent=True)

    async def abort(self, request_id: str) -> None:
        """Stop a request now; its iterator ends with finish='abort'."""
        if self.scheduler is not None:
            self.scheduler.cancel(request_id, silent=False)

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        return (0, 0) if self.scheduler is None else self.scheduler.counts()

    async def add_adapter(self, name: str, src: str, folder: Path, pin: bool = False) -> dict[str, Any]:
        """Read, check and register a peft LoRA adapter (placed on the device when pinned)."""
        if self.lora is None:
            raise GenerationFailed("the transformers engine is not running")
        return await asyncio.to_thread(self.lora.register, name, src, Path(folder), pin=pin)

    async def remove_adapter(self, name: str) -> None:
        """Forget an adapter; rows running with it finish with it."""
        if self.lora is None:
            raise NotFound(f"adapter '{name}' not found")
        self.lora.remove(name)

    def adapters(self) -> list[dict[str, Any]]:
        """The registered adapters."""
        return [] if self.lora is None else self.lora.describe()

    async def shutdown(self) -> None:
        """Stop the loop, end every request with an error, and free the model."""
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop, 30.0)
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
    return len(usable_cpus())


def _gguf_file(path: Path) -> Path | None:
    """The path when it is a .gguf file (transformers then dequantizes it on load)."""
    return path if path.is_file() and path.suffix.lower() == ".gguf" else None


def _load_args(path: Path) -> tuple[str, dict[str, str]]:
    """from_pretrained's arguments: the directory, or a GGUF file's folder plus {"gguf_file": name}."""
    gguf = _gguf_file(path)
    return (str(gguf.parent), {"gguf_file": gguf.name}) if gguf is not None else (str(path), {})


def _attention_kwargs(where: str, extra: dict[str, str], trust_remote_code: bool) -> dict[str, str]:
    """Eager attention for models that soft-cap attention logits (Gemma 2): transformers' default SDPA
    kernel ignores the cap and gives other tokens than the model defines (and than vLLM gives)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    text = config.get_text_config(decoder=True)
    return {"attn_implementation": "eager"} if getattr(text, "attn_logit_softcapping", None) else {}
