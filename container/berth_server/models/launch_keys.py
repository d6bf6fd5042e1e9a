"""Which launch-body keys may reach an engine: each engine's own list (engines/facts.py), and the keys no request sets.

A launch body (POST /v1/models) holds Xinference's own keys, which models/launch_resolver.py reads,
and engine arguments. An engine argument passes only when the engine lists it in its EngineFacts
(the "auto" engine accepts the union); a launch key that Berth accepts but does not use goes in
IGNORED_KEYS.
Anything that loads code, reads or writes files, or changes where weights come from is an operator
setting, read from the environment by settings.py; OPERATOR_ONLY names the variable to use instead.
Every refused key gets a 4xx naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth_server.engines.facts import check_launch_keys

# Xinference launch keys Berth accepts and deliberately ignores (a non-default value is reported, not fatal).
IGNORED_KEYS = (
    "worker_ip", "gpu_idx", "replica_config", "enable_virtual_env", "virtual_env_packages",
    "virtual_env_find_links", "envs", "request_limits",
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


def check_engine_args(engine: str, args: Mapping[str, Any], model_type: str = "LLM") -> dict[str, Any]:
    """The engine arguments of a launch body, or InvalidRequest naming the first refused key and why."""
    return check_launch_keys(engine, args, OPERATOR_ONLY, model_type)
