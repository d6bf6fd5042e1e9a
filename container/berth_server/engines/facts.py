"""What each engine declares about itself, in one light module (no torch, no vLLM): read by the launcher too.

An engine's facts: its name and other spellings, the package it needs, where its class lives, the
launch-body keys it accepts, the weight formats it serves, the settings it reads and whether it
compiles constraints itself. Adding an engine adds one EngineFacts here and its module; nothing
outside engines/ names an engine. The engine's finish-reason words live in its own module, mapped
there to the canonical reasons (engines/base.py EngineFinish).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from berth_server.errors import InvalidRequest


@dataclass(frozen=True)
class EngineFacts:
    """One engine, as the rest of Berth may know it.

    Attributes:
        name: the canonical name (BERTH_ENGINE, a launch's model_engine, /v1/models' engine).
        aliases: other spellings accepted for it (Xinference writes "llama.cpp"; env files avoid the dot).
        package: the import that must exist for the engine to run at all.
        engine_class: (module, class) of its Engine.
        launch_keys: the engine arguments a launch body may set.
        weight_formats: the checkpoint formats it loads ("safetensors", "pytorch", "gguf").
        settings: the environment variables (or prefixes, ending in "_") it reads, for the README and errors.
        compiles_constraints: it compiles structured-output constraints itself, so the model process
            hands it the canonical constraint instead of compiling a token mask for it.
    """

    name: str
    aliases: tuple[str, ...]
    package: str
    engine_class: tuple[str, str]
    launch_keys: frozenset[str]
    weight_formats: frozenset[str]
    settings: tuple[str, ...] = ()
    compiles_constraints: bool = False


VLLM = EngineFacts(
    name="vllm", aliases=(), package="vllm", engine_class=("berth_server.engines.vllm_engine", "VllmEngine"),
    launch_keys=frozenset({
        "max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
        "enable_prefix_caching", "enable_chunked_prefill", "block_size", "kv_cache_dtype",
        "enforce_eager", "max_logprobs", "swap_space", "cpu_offload_gb", "seed",
        # LoRA sizing (peft_model_config itself is read by launch_resolver and turns LoRA on).
        "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras",
    }),
    weight_formats=frozenset({"safetensors", "pytorch"}),
    settings=("BERTH_VLLM_", "SM_VLLM_", "BERTH_GPU_MEMORY_UTILIZATION", "BERTH_KV_CACHE_GB", "BERTH_ENABLE_LORA",
              "BERTH_MAX_LORAS", "BERTH_MAX_LORA_RANK", "BERTH_MAX_CPU_LORAS"),
    compiles_constraints=True,  # vLLM's structured outputs (xgrammar), checked in add_request
)
TRANSFORMERS = EngineFacts(
    name="transformers", aliases=(), package="transformers",
    engine_class=("berth_server.engines.transformers_engine", "TransformersEngine"),
    launch_keys=frozenset({"num_threads"}),
    # GGUF only when asked for by name (it dequantizes): transformers_engine.cannot_serve says so.
    weight_formats=frozenset({"safetensors", "pytorch", "gguf"}),
    settings=("BERTH_MAX_BATCH_SIZE", "BERTH_KV_CACHE_GB", "BERTH_MAX_LORAS", "BERTH_MAX_LORA_RANK"),
)
LLAMA_CPP = EngineFacts(
    name="llama.cpp", aliases=("llamacpp", "llama-cpp", "llama_cpp"), package="xllamacpp",
    engine_class=("berth_server.engines.llamacpp_engine", "LlamaCppEngine"),
    # llama.cpp's own names, as Xinference's llama.cpp engine takes them (engines/llamacpp_params.py).
    launch_keys=frozenset({"n_ctx", "n_parallel", "n_gpu_layers", "n_threads"}),
    weight_formats=frozenset({"gguf"}),
    settings=("BERTH_LLAMACPP_THREADS", "BERTH_N_GPU_LAYERS", "BERTH_KV_CACHE_GB"),
    compiles_constraints=True,  # llama.cpp's grammars (engines/llamacpp_constraints.py)
)

# Every engine, in the order `auto` tries them: llama.cpp serves GGUF files only and is the fast way to
# serve them on a CPU; the last one is the fallback that serves anything it can load.
ENGINES: tuple[EngineFacts, ...] = (LLAMA_CPP, VLLM, TRANSFORMERS)
BY_NAME: Mapping[str, EngineFacts] = {facts.name: facts for facts in ENGINES}
_SPELLINGS: Mapping[str, str] = {
    **{facts.name: facts.name for facts in ENGINES},
    **{alias: facts.name for facts in ENGINES for alias in facts.aliases},
    "auto": "auto",
}


def engine_name(raw: str | None, what: str = "engine") -> str:
    """The canonical engine name ("auto" included) for a spelling, any case; InvalidRequest naming the choices."""
    spelled = (raw or "auto").strip().lower() or "auto"
    if spelled not in _SPELLINGS:
        raise InvalidRequest(f"{what} {raw!r} is not available; use auto, {', '.join(BY_NAME)}", param=what)
    return _SPELLINGS[spelled]


def allowed_launch_keys(engine: str) -> frozenset[str]:
    """The engine arguments a launch body may set for `engine` ("auto": any engine's)."""
    if engine in BY_NAME:
        return BY_NAME[engine].launch_keys
    return frozenset().union(*(facts.launch_keys for facts in ENGINES))


def check_launch_keys(engine: str, args: Mapping[str, Any], operator_only: Mapping[str, str]) -> dict[str, Any]:
    """The engine arguments of a launch body, or InvalidRequest naming the first refused key and why.

    Args:
        engine: the canonical engine name, or "auto".
        args: the body's keys that are not Xinference's own.
        operator_only: keys that load code or touch files -> the variable the operator sets instead.
    """
    allowed = allowed_launch_keys(engine)
    for key, value in args.items():
        if key in operator_only:
            raise InvalidRequest(f"launch key {key!r} is an operator setting, not a request field: "
                                 f"set {operator_only[key]} in the server's environment", param=key)
        if key not in allowed:
            raise InvalidRequest(f"launch key {key!r} is not accepted for engine {engine!r}; "
                                 f"accepted: {', '.join(sorted(allowed))}", param=key)
        if not isinstance(value, (bool, int, float, str)):
            raise InvalidRequest(f"launch key {key!r} must be a number, string or boolean", param=key)
    return dict(args)
