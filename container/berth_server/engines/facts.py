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
    # The model types it serves; audio and image engines (engines/media.py) serve no LLMs.
    model_types: frozenset[str] = frozenset({"LLM", "embedding", "rerank"})
    # Audio and image engines: the Xinference model_family values they serve (lower case).
    families: frozenset[str] = frozenset()
    extra: str = "server"  # the pyproject extra that installs `package`


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
    settings=("BERTH_MAX_BATCH_SIZE", "BERTH_KV_CACHE_GB", "BERTH_KV_CACHE_FRACTION", "BERTH_KV_BLOCK_SIZE",
              "BERTH_PREFIX_CACHING", "BERTH_MAX_LORAS", "BERTH_MAX_LORA_RANK"),
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

# Audio and image engines (engines/media.py): they make no tokens, so they sit behind the media interface.
FASTER_WHISPER = EngineFacts(
    name="faster-whisper", aliases=("faster_whisper", "whisper"), package="faster_whisper",
    engine_class=("berth_server.engines.whisper_engine", "FasterWhisperEngine"),
    # faster-whisper's WhisperModel and transcribe knobs a launch (or default_model_config) may set.
    launch_keys=frozenset({"compute_type", "cpu_threads", "beam_size"}),
    weight_formats=frozenset({"ct2", "pytorch"}), model_types=frozenset({"audio"}), extra="audio",
    families=frozenset({"whisper"}),
)
TRANSFORMERS_WHISPER = EngineFacts(
    name="transformers-whisper", aliases=("transformers_whisper", "hf-whisper"), package="transformers",
    engine_class=("berth_server.engines.whisper_hf_engine", "TransformersWhisperEngine"),
    launch_keys=frozenset({"num_beams"}),  # transformers' generate
    weight_formats=frozenset({"pytorch", "safetensors"}), model_types=frozenset({"audio"}), extra="audio",
    families=frozenset({"whisper"}),
)
PIPER = EngineFacts(
    name="piper", aliases=("piper-tts", "piper_tts"), package="piper",
    engine_class=("berth_server.engines.piper_engine", "PiperEngine"),
    launch_keys=frozenset({"noise_scale", "noise_w_scale", "length_scale"}),  # Piper's SynthesisConfig
    weight_formats=frozenset({"onnx"}), model_types=frozenset({"audio"}), extra="tts",
    families=frozenset({"piper"}),
)
DIFFUSERS = EngineFacts(
    name="diffusers", aliases=(), package="diffusers",
    engine_class=("berth_server.engines.diffusers_engine", "DiffusersEngine"),
    launch_keys=frozenset({"num_inference_steps", "guidance_scale", "torch_dtype"}),
    weight_formats=frozenset({"pytorch", "safetensors"}), model_types=frozenset({"image"}), extra="image",
    families=frozenset({"stable_diffusion"}),
)

# Every token engine, in the order `auto` tries them: llama.cpp serves GGUF files only and is the fast way to
# serve them on a CPU; the last one is the fallback that serves anything it can load.
ENGINES: tuple[EngineFacts, ...] = (LLAMA_CPP, VLLM, TRANSFORMERS)
# Every audio and image engine, in the order `auto` tries them.
MEDIA_ENGINES: tuple[EngineFacts, ...] = (FASTER_WHISPER, TRANSFORMERS_WHISPER, PIPER, DIFFUSERS)
BY_NAME: Mapping[str, EngineFacts] = {facts.name: facts for facts in ENGINES + MEDIA_ENGINES}
_SPELLINGS: Mapping[str, str] = {
    **{facts.name: facts.name for facts in BY_NAME.values()},
    **{alias: facts.name for facts in BY_NAME.values() for alias in facts.aliases},
    "auto": "auto",
}


def engine_name(raw: str | None, what: str = "engine") -> str:
    """The canonical engine name ("auto" included) for a spelling, any case; InvalidRequest naming the choices."""
    spelled = (raw or "auto").strip().lower() or "auto"
    if spelled not in _SPELLINGS:
        raise InvalidRequest(f"{what} {raw!r} is not available; use auto, {', '.join(BY_NAME)}", param=what)
    return _SPELLINGS[spelled]


def allowed_launch_keys(engine: str, model_type: str = "LLM") -> frozenset[str]:
    """The engine arguments a launch body may set for `engine` ("auto": any engine's of that model type)."""
    if engine in BY_NAME:
        return BY_NAME[engine].launch_keys
    return frozenset().union(*(facts.launch_keys for facts in BY_NAME.values() if model_type in facts.model_types))


def check_launch_keys(engine: str, args: Mapping[str, Any], operator_only: Mapping[str, str],
                      model_type: str = "LLM") -> dict[str, Any]:
    """The engine arguments of a launch body, or InvalidRequest naming the first refused key and why.

    Args:
        engine: the canonical engine name, or "auto".
        args: the body's keys that are not Xinference's own.
        operator_only: keys that load code or touch files -> the variable the operator sets instead.
        model_type: the launched model's type ("auto" accepts any key of an engine serving that type).
    """
    allowed = allowed_launch_keys(engine, model_type)
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


def media_engines_for(model_type: str, family: str | None) -> list[EngineFacts]:
    """The audio or image engines that serve `family` of `model_type` (every one of the type when family is None)."""
    return [facts for facts in MEDIA_ENGINES if model_type in facts.model_types
            and (family is None or family.lower() in facts.families)]


def check_media_family(model_type: str, family: str | None, engine: str = "auto") -> None:
    """InvalidRequest, saying why, when no engine (or not the chosen one) serves this audio or image family."""
    able = media_engines_for(model_type, family)
    served = sorted({name for facts in MEDIA_ENGINES if model_type in facts.model_types for name in facts.families})
    if not able:
        raise InvalidRequest(f"Berth cannot serve the {model_type} model_family {family!r}: no engine serves it; "
                             f"the {model_type} families it serves are {', '.join(served)}", param="model_family")
    if engine != "auto" and engine not in {facts.name for facts in able}:
        raise InvalidRequest(f"the {engine} engine does not serve the {model_type} model_family {family!r}; "
                             f"use {', '.join(facts.name for facts in able)}", param="model_engine")
