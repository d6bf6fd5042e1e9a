"""The vLLM engine: vLLM's async engine behind Berth's token-ids-in, token-steps-out interface.

vLLM loads its tokenizer only for structured outputs and bad_words: the model process renders chat templates, tokenizes,
detokenizes and applies stop strings once for every engine, so this engine only moves token ids
and logprobs. vLLM is imported lazily (in start and cannot_serve), never at module import.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.engines import vllm_params, vllm_support
from berth_server.engines.base import (
    Engine,
    EngineCrashedAtStart,
    EngineFinish,
    EngineLoadInfo,
    EngineRequest,
    EngineStep,
)
from berth_server.engines.cpus import usable_cpus
from berth_server.engines.facts import VLLM
from berth_server.engines.stderr_tail import StderrTail
from berth_server.engines.vllm_lora import VllmAdapters, lora_kwargs, lora_wanted
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings, export_defaults

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 3.0
_FINISH: dict[str, EngineFinish] = {"stop": "eos", "length": "length", "abort": "abort"}


class VllmEngine(Engine):
    """vLLM's AsyncLLM fed with prompt token ids; yields token-id deltas per request."""

    name = VLLM.name
    compiles_constraints = VLLM.compiles_constraints

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
        return vllm_support.cannot_serve(config, model_dir, settings)

    async def start(self) -> EngineLoadInfo:
        """Create vLLM's async engine (it spawns its engine-core process) and report its shape."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cpu = vllm_params.on_cpu(self.settings)
        if cpu:
            # vLLM reads these from the environment itself, in the engine-core process it spawns.
            export_defaults(vllm_params.cpu_environment(self.settings, usable_cpus()))
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
            # vLLM caches prompt prefixes by default where the model and platform allow it (its CPU build on
            # x86 and Arm too): a stateful session's next turn reuses its earlier turns' KV blocks from there.
            extra={"tensor_parallel_size": vllm_config.parallel_config.tensor_parallel_size,
                   "prefix_caching": bool(vllm_config.cache_config.enable_prefix_caching)},
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
            constraint = request.sampling.constraint
            if constraint is not None and _is_constraint_error(str(exc)):
                # vLLM compiles constraints itself (the model process did not): name the field it came from.
                raise errors.InvalidRequest(f"{constraint.param}: vLLM cannot compile this constraint: {exc}",
                                            param=constraint.param) from exc
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


def _is_constraint_error(message: str) -> bool:
    """Whether vLLM's refusal is about the structured-output constraint (its grammar backend's words)."""
    lowered = message.lower()
    return any(word in lowered for word in ("grammar", "json schema", "regex", "structured output", "choice"))
