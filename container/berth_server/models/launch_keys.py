"""Which launch-body keys may reach an engine: one allowlist per engine, in this one place.

A launch body (POST /v1/models) holds Xinference's own keys, which models/launch_resolver.py reads,
and engine arguments. An engine argument passes only when it is listed for the engine here:
- to let an engine take a new key from launch bodies, add it to that engine's set in ENGINE_KEYS;
- a new engine adds one ENGINE_KEYS entry (the "auto" engine accepts the union);
- a launch key that Berth accepts but does not use goes in IGNORED_KEYS.
Anything that loads code, reads or writes files, or changes where weights come from is an operator
setting, read from the environment by settings.py; OPERATOR_ONLY names the variable to use instead.
Every refused key gets a 4xx naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth_server.errors import InvalidRequest

ENGINE_KEYS: Mapping[str, frozenset[str]] = {
    "vllm": frozenset({
        "max_model_len", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
        "enable_prefix_caching", "enable_chunked_prefill", "block_size", "kv_cache_dtype",
        "enforce_eager", "max_logprobs", "swap_space", "cpu_offload_gb", "seed",
        # LoRA sizing (peft_model_config itself is read by launch_resolver and turns LoRA on).
        "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras",
    }),
    "transformers": frozenset({"num_threads"}),
    # llama.cpp's own names, as Xinference's llama.cpp engine takes them (engines/llamacpp_params.py).
    "llama.cpp": frozenset({"n_ctx", "n_parallel", "n_gpu_layers", "n_threads"}),
}

# Xinference launch keys Berth accepts and deliberately ignores (a non-default value is reported, not fatal).
IGNORED_KEYS = (
    "worker_ip", "gpu_idx", "replica_config", "enable_virtual_env", "virtual_env_packages",
    "virtual_env_find_links", "envs", "request_limits", "n_worker",
)

# Keys that load code or touch files: never from a request; the operator sets the variable instead.
OPERATOR_ONLY: Mapping[str, str] = {
    "trust_remote_code": "HF_MODEL_TRUST_REMOTE_CODE",
    "download_dir": "BERTH_HOME",
    "tokenizer": "HF_MODEL_ID (the model's own tokenizer is used)",
    "hf_overrides": "BERTH_VLLM_HF_OVERRIDES",
    "load_format": "BERTH_VLLM_LOAD_FORMAT",
    "model_loader_extra_config": "BERTH_VLLM_MODEL_LOADER_EXTRA_CONFIG",
    "worker_cls": "BERTH_VLLM_WORKER_CLS",
    "worker_extension_cls": "BERTH_VLLM_WORKER_EXTENSION_CLS",
    "allowed_local_media_path": "BERTH_VLLM_ALLOWED_LOCAL_MEDIA_PATH",
    "chat_template": "a registration's chat_template",
    "revision": "HF_MODEL_REVISION or a registration's model_revision",
}


def allowed_keys(engine: str) -> frozenset[str]:
    """The engine arguments a launch body may set for `engine` ("auto": any engine's)."""
    if engine in ENGINE_KEYS:
        return ENGINE_KEYS[engine]
    return frozenset().union(*ENGINE_KEYS.values())


def check_engine_args(engine: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The engine arguments of a launch body, or InvalidRequest naming the first refused key and why."""
    allowed = allowed_keys(engine)
    for key, value in args.items():
        if key in OPERATOR_ONLY:
            raise InvalidRequest(f"launch key {key!r} is an operator setting, not a request field: "
                                 f"set {OPERATOR_ONLY[key]} in the server's environment", param=key)
        if key not in allowed:
            raise InvalidRequest(f"launch key {key!r} is not accepted for engine {engine!r}; "
                                 f"accepted: {', '.join(sorted(allowed))}", param=key)
        if not isinstance(value, (bool, int, float, str)):
            raise InvalidRequest(f"launch key {key!r} must be a number, string or boolean", param=key)
    return dict(args)
