"""Settings only one engine reads, declared here beside the engines; settings.py reads them as it reads its own.

Each class is read from the environment of the process that runs the engine (the model process
inherits the server's), and once by the launcher at start, so a bad value fails there, not at a launch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from berth_server.settings import TOOL_CALL_PARSER_VARS, read_declared, setting
from berth_server.settings_values import SettingsError

# Env prefixes that pass arbitrary engine arguments to vLLM (the AWS vLLM container uses SM_VLLM_).
VLLM_ARG_PREFIXES = ("BERTH_VLLM_", "SM_VLLM_")


@dataclass(frozen=True)
class VllmSettings:
    """vLLM's own: its GPU memory share and any engine argument passed through by name."""

    gpu_memory_utilization: float | None = setting(None, "BERTH_GPU_MEMORY_UTILIZATION", kind="float")
    args: Mapping[str, str] = field(default_factory=dict)  # BERTH_VLLM_<ARG> / SM_VLLM_<ARG> -> {"arg": value}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VllmSettings:
        values, env = read_declared(cls, env)
        return cls(**values, args=_vllm_args(env))


@dataclass(frozen=True)
class LlamaCppSettings:
    """llama.cpp's own: its CPU threads and the layers it puts on a GPU."""

    threads: int | None = setting(None, "BERTH_LLAMACPP_THREADS", kind="int", minimum=1)  # None: all cores
    n_gpu_layers: int | None = setting(None, "BERTH_N_GPU_LAYERS", kind="int", minimum=-1)  # None: all on a GPU

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LlamaCppSettings:
        values, _ = read_declared(cls, env)
        return cls(**values)


@dataclass(frozen=True)
class TransformersSettings:
    """The transformers engine's own: its KV pool (kv_pool.py), sized once at load by BERTH_KV_CACHE_GB
    (Settings.kv_cache_gb, shared with the other engines) or else by this fraction of the free memory."""

    kv_cache_fraction: float | None = setting(None, "BERTH_KV_CACHE_FRACTION", kind="float")
    kv_block_size: int = setting(16, "BERTH_KV_BLOCK_SIZE", kind="int", minimum=1)  # tokens per block
    prefix_caching: bool = setting(True, "BERTH_PREFIX_CACHING", kind="bool")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TransformersSettings:
        values, _ = read_declared(cls, env)
        fraction = values.get("kv_cache_fraction")
        if fraction is not None and not 0 < fraction <= 0.95:
            raise SettingsError(f"BERTH_KV_CACHE_FRACTION must be in (0, 0.95], not {fraction}")
        return cls(**values)


def _vllm_args(env: Mapping[str, str]) -> dict[str, str]:
    """Collect BERTH_VLLM_<ARG>/SM_VLLM_<ARG> into {"arg": "value"}; the vLLM engine validates names."""
    args: dict[str, str] = {}
    for key, value in env.items():
        for prefix in VLLM_ARG_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix) and key not in TOOL_CALL_PARSER_VARS:
                args[key[len(prefix):].lower()] = value
    return args


def check_engine_settings(env: Mapping[str, str] | None = None) -> None:
    """Read every engine's own settings once (the launcher, at start): SettingsError on a bad value."""
    VllmSettings.from_env(env)
    LlamaCppSettings.from_env(env)
    TransformersSettings.from_env(env)
