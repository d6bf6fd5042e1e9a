"""The one place that reads the environment: a frozen snapshot of every setting Berth honours."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# Re-exported: callers import SettingsError and parse_bool from here.
from berth_server.canonical import check_parser_name
from berth_server.settings_values import (
    SettingsError,
    env_bool,
    env_first_int,
    env_float,
    env_int,
    parse_bool,
)

EngineChoice = Literal["auto", "vllm", "transformers", "llama.cpp"]
# Other spellings of engine names (Xinference writes "llama.cpp"; env files often avoid the dot).
ENGINE_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp"}
ENGINE_NAMES = ("auto", "vllm", "transformers", "llama.cpp")

# Env prefixes that pass arbitrary engine arguments to vLLM (the AWS vLLM container uses SM_VLLM_).
VLLM_ARG_PREFIXES = ("BERTH_VLLM_", "SM_VLLM_")
# Berth's own name first, then vLLM's server option as vLLM and the AWS vLLM container spell it.
TOOL_CALL_PARSER_VARS = ("BERTH_TOOL_CALL_PARSER", "BERTH_VLLM_TOOL_CALL_PARSER", "SM_VLLM_TOOL_CALL_PARSER")


def _vllm_args(env: Mapping[str, str]) -> dict[str, str]:
    """Collect BERTH_VLLM_<ARG>/SM_VLLM_<ARG> into {"arg": "value"}; the vLLM engine validates names."""
    args: dict[str, str] = {}
    for key, value in env.items():
        for prefix in VLLM_ARG_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix) and key not in TOOL_CALL_PARSER_VARS:
                args[key[len(prefix):].lower()] = value
    return args


def _tool_call_parser(env: Mapping[str, str]) -> str | None:
    """The first of TOOL_CALL_PARSER_VARS that is set, checked against the known parsers."""
    for name in TOOL_CALL_PARSER_VARS:
        raw = (env.get(name) or "").strip()
        if raw:
            try:
                return check_parser_name(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
    return None


def _lora_settings(env: Mapping[str, str]) -> LoraSettings:
    """BERTH_* names first, then the AWS vLLM (SM_VLLM_*) and LMI (OPTION_*) spellings; TGI's LORA_ADAPTERS."""
    from berth_server.adapter_specs import parse_lora_adapters
    from berth_server.errors import InvalidRequest

    try:
        adapters = tuple((a.name, a.src) for a in parse_lora_adapters(env.get("LORA_ADAPTERS", "")))
    except InvalidRequest as exc:
        raise SettingsError(f"LORA_ADAPTERS: {exc.message}") from None
    enabled = False
    for name in ("BERTH_ENABLE_LORA", "SM_VLLM_ENABLE_LORA", "OPTION_ENABLE_LORA"):
        if env.get(name) is not None:
            enabled = parse_bool(name, env[name])
            break
    return LoraSettings(
        enabled=enabled,
        max_loras=env_first_int(env, ("BERTH_MAX_LORAS", "SM_VLLM_MAX_LORAS", "OPTION_MAX_LORAS"), 4) or 4,
        max_lora_rank=env_first_int(env, ("BERTH_MAX_LORA_RANK", "SM_VLLM_MAX_LORA_RANK", "OPTION_MAX_LORA_RANK"),
                                 16) or 16,
        max_cpu_loras=env_first_int(env, ("BERTH_MAX_CPU_LORAS", "SM_VLLM_MAX_CPU_LORAS", "OPTION_MAX_CPU_LORAS"),
                                 None),
        adapters=adapters,
    )


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters: on/off for vLLM, sizing (vLLM's meanings), and TGI's LORA_ADAPTERS preload list."""

    enabled: bool = False  # vLLM: LoRA on even with no adapter configured at start
    max_loras: int = 4  # adapters resident on the device at once (an LRU; pinned ones stay)
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # host copies kept; None: max_loras
    adapters: tuple[tuple[str, str], ...] = ()  # (name, src) loaded at start

    def to_env(self) -> dict[str, str]:
        """The BERTH_* names that rebuild these settings."""
        env = {"BERTH_ENABLE_LORA": "true" if self.enabled else "false", "BERTH_MAX_LORAS": str(self.max_loras),
               "BERTH_MAX_LORA_RANK": str(self.max_lora_rank)}
        if self.max_cpu_loras is not None:
            env["BERTH_MAX_CPU_LORAS"] = str(self.max_cpu_loras)
        if self.adapters:
            env["LORA_ADAPTERS"] = ",".join(f"{name}={src}" for name, src in self.adapters)
        return env


@dataclass(frozen=True)
class Settings:
    """Everything configurable, read once. Tests construct it directly."""

    # The default model (TGI / SageMaker names).
    hf_model_id: str | None = None
    hf_model_revision: str | None = None
    hf_model_gguf_file: str | None = None  # the file to serve when HF_MODEL_ID is a GGUF repo or folder
    model_uid: str | None = None  # BERTH_MODEL_UID; else HF_MODEL_ID; else "default"
    trust_remote_code: bool = False
    quantize: str | None = None
    dtype: str | None = None
    sm_num_gpus: int = 1
    # Limits (TGI names).
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_batch_prefill_tokens: int | None = None
    max_concurrent_requests: int = 128
    max_body_bytes: int = 6 * 1024 * 1024
    messages_api_enabled: bool = False
    # Network.
    host: str = "0.0.0.0"
    port: int = 8080
    # Berth's own.
    engine: EngineChoice = "auto"
    home: Path = field(default_factory=lambda: Path.home() / ".berth")
    api_key: str | None = None
    metrics_public: bool = False  # BERTH_METRICS_PUBLIC: /metrics without the API key
    model_roots: tuple[Path, ...] = ()  # BERTH_MODEL_ROOTS: launches read local weights only from under these
    workers: int = 1
    graceful_timeout_s: float = 25.0
    model_load_timeout_s: float = 3600.0
    max_model_restarts: int = 3
    sagemaker_model_dir: Path = Path("/opt/ml/model")
    runtime_dir: Path | None = None
    log_level: str = "INFO"
    device: str = "auto"
    max_batch_size: int = 32
    gpu_memory_utilization: float | None = None
    kv_cache_gb: float | None = None
    llamacpp_threads: int | None = None  # None: every core
    n_gpu_layers: int | None = None  # llama.cpp layers on the GPU; None: all when one is visible
    vllm_args: Mapping[str, str] = field(default_factory=dict)
    s3_endpoint_url: str | None = None
    download_workers: int = 8
    tool_call_parser: str | None = None  # the default model's (protocols/openai/tool_calls.py)
    # Set by the launcher for gunicorn's workers; prometheus_client reads the same variable itself.
    prometheus_multiproc_dir: str | None = None
    request_timeout_s: float | None = None  # BERTH_REQUEST_TIMEOUT: a request's whole budget in its model
    stream_buffer_events: int = 8192  # BERTH_STREAM_BUFFER: events one request may have waiting in a worker
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def default_model_uid(self) -> str:
        """The id that /v1/models shows for the default model."""
        return self.model_uid or self.hf_model_id or "default"

    def replace(self, **changes: object) -> Settings:
        """Return a copy with some fields changed (tests and the launcher use it)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """Environment that makes from_env() rebuild these settings in a child process."""
        env = {
            "BERTH_ENGINE": self.engine,
            "BERTH_HOME": str(self.home),
            "BERTH_WORKERS": str(self.workers),
            "BERTH_GRACEFUL_TIMEOUT": str(self.graceful_timeout_s),
            "BERTH_MODEL_LOAD_TIMEOUT": str(self.model_load_timeout_s),
            "BERTH_MAX_MODEL_RESTARTS": str(self.max_model_restarts),
            "BERTH_SAGEMAKER_MODEL_DIR": str(self.sagemaker_model_dir),
            "BERTH_LOG_LEVEL": self.log_level,
            "BERTH_DEVICE": self.device,
            "BERTH_MAX_BATCH_SIZE": str(self.max_batch_size),
            "BERTH_HOST": self.host,
            "PORT": str(self.port),
            "MAX_CONCURRENT_REQUESTS": str(self.max_concurrent_requests),
            "BERTH_MAX_BODY_BYTES": str(self.max_body_bytes),
            "MESSAGES_API_ENABLED": "true" if self.messages_api_enabled else "false",
            "HF_MODEL_TRUST_REMOTE_CODE": "true" if self.trust_remote_code else "false",
            "SM_NUM_GPUS": str(self.sm_num_gpus),
            "BERTH_DOWNLOAD_WORKERS": str(self.download_workers),
            "BERTH_STREAM_BUFFER": str(self.stream_buffer_events),
            "BERTH_METRICS_PUBLIC": "true" if self.metrics_public else "false",
        }
        optional = {
            "HF_MODEL_ID": self.hf_model_id,
            "HF_MODEL_REVISION": self.hf_model_revision,
            "HF_MODEL_GGUF_FILE": self.hf_model_gguf_file,
            "BERTH_LLAMACPP_THREADS": self.llamacpp_threads,
            "BERTH_N_GPU_LAYERS": self.n_gpu_layers,
            "BERTH_MODEL_UID": self.model_uid,
            "HF_MODEL_QUANTIZE": self.quantize,
            "DTYPE": self.dtype,
            "MAX_INPUT_TOKENS": self.max_input_tokens,
            "MAX_TOTAL_TOKENS": self.max_total_tokens,
            "MAX_BATCH_PREFILL_TOKENS": self.max_batch_prefill_tokens,
            "BERTH_API_KEY": self.api_key,
            "BERTH_RUNTIME_DIR": self.runtime_dir,
            "BERTH_GPU_MEMORY_UTILIZATION": self.gpu_memory_utilization,
            "BERTH_KV_CACHE_GB": self.kv_cache_gb,
            "BERTH_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "BERTH_TOOL_CALL_PARSER": self.tool_call_parser,
            "BERTH_REQUEST_TIMEOUT": self.request_timeout_s,
            "BERTH_MODEL_ROOTS": os.pathsep.join(str(root) for root in self.model_roots) or None,
        }
        env.update({k: str(v) for k, v in optional.items() if v is not None})
        env.update({f"BERTH_VLLM_{k.upper()}": v for k, v in self.vllm_args.items()})
        env.update(self.lora.to_env())
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment once (os.environ unless given) into a Settings."""
        env = os.environ if env is None else env
        engine = env.get("BERTH_ENGINE", "auto").strip().lower() or "auto"
        engine = ENGINE_ALIASES.get(engine, engine)
        if engine not in ENGINE_NAMES:
            raise SettingsError(f"BERTH_ENGINE={engine!r}: use {', '.join(ENGINE_NAMES)}")
        # SageMaker tells the container its port with SAGEMAKER_BIND_TO_PORT; TGI users set PORT.
        port = env_int(env, "SAGEMAKER_BIND_TO_PORT", None, 1) or env_int(env, "PORT", 8080, 1)
        home = env.get("BERTH_HOME") or str(Path.home() / ".berth")
        runtime_dir = env.get("BERTH_RUNTIME_DIR")
        quantize = env.get("HF_MODEL_QUANTIZE") or env.get("QUANTIZE") or None
        return cls(
            hf_model_id=env.get("HF_MODEL_ID") or env.get("MODEL_ID") or None,
            hf_model_revision=env.get("HF_MODEL_REVISION") or env.get("REVISION") or None,
            hf_model_gguf_file=env.get("HF_MODEL_GGUF_FILE") or None,
            model_uid=env.get("BERTH_MODEL_UID") or None,
            trust_remote_code=env_bool(env, "HF_MODEL_TRUST_REMOTE_CODE", env_bool(env, "TRUST_REMOTE_CODE", False)),
            quantize=quantize,
            dtype=env.get("DTYPE") or env.get("BERTH_DTYPE") or None,
            sm_num_gpus=env_int(env, "SM_NUM_GPUS", None, 1) or env_int(env, "NUM_SHARD", 1, 1) or 1,
            max_input_tokens=env_int(env, "MAX_INPUT_TOKENS", env_int(env, "MAX_INPUT_LENGTH", None, 1), 1),
            max_total_tokens=env_int(env, "MAX_TOTAL_TOKENS", None, 1),
            max_batch_prefill_tokens=env_int(env, "MAX_BATCH_PREFILL_TOKENS", None, 1),
            max_concurrent_requests=env_int(env, "MAX_CONCURRENT_REQUESTS", 128, 1) or 128,
            max_body_bytes=env_int(env, "BERTH_MAX_BODY_BYTES", 6 * 1024 * 1024, 1) or 6 * 1024 * 1024,
            messages_api_enabled=env_bool(env, "MESSAGES_API_ENABLED", False),
            host=env.get("BERTH_HOST", "0.0.0.0"),
            port=port or 8080,
            engine=engine,  # type: ignore[arg-type]
            home=Path(home).expanduser(),
            api_key=env.get("BERTH_API_KEY") or None,
            metrics_public=env_bool(env, "BERTH_METRICS_PUBLIC", False),
            model_roots=tuple(Path(part).expanduser() for part in
                              (env.get("BERTH_MODEL_ROOTS") or "").replace(",", os.pathsep).split(os.pathsep)
                              if part.strip()),
            workers=env_int(env, "BERTH_WORKERS", 1, 1) or 1,
            graceful_timeout_s=env_float(env, "BERTH_GRACEFUL_TIMEOUT", 25.0) or 25.0,
            model_load_timeout_s=env_float(env, "BERTH_MODEL_LOAD_TIMEOUT", 3600.0) or 3600.0,
            max_model_restarts=env_int(env, "BERTH_MAX_MODEL_RESTARTS", 3) or 0,
            sagemaker_model_dir=Path(env.get("BERTH_SAGEMAKER_MODEL_DIR", "/opt/ml/model")),
            runtime_dir=Path(runtime_dir) if runtime_dir else None,
            log_level=env.get("BERTH_LOG_LEVEL", "INFO").upper(),
            device=env.get("BERTH_DEVICE", "auto"),
            max_batch_size=env_int(env, "BERTH_MAX_BATCH_SIZE", 32, 1) or 32,
            gpu_memory_utilization=env_float(env, "BERTH_GPU_MEMORY_UTILIZATION", None),
            kv_cache_gb=env_float(env, "BERTH_KV_CACHE_GB", None),
            llamacpp_threads=env_int(env, "BERTH_LLAMACPP_THREADS", None, 1),
            n_gpu_layers=env_int(env, "BERTH_N_GPU_LAYERS", None, -1),
            vllm_args=_vllm_args(env),
            s3_endpoint_url=env.get("BERTH_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None,
            download_workers=env_int(env, "BERTH_DOWNLOAD_WORKERS", 8, 1) or 8,
            tool_call_parser=_tool_call_parser(env),
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            request_timeout_s=env_float(env, "BERTH_REQUEST_TIMEOUT", None) or None,
            stream_buffer_events=env_int(env, "BERTH_STREAM_BUFFER", 8192, 16) or 8192,
            lora=_lora_settings(env),
        )

    def child_environment(self, **extra: str) -> dict[str, str]:
        """The environment for a child process: ours, these settings, and `extra` on top."""
        env = dict(os.environ)
        env.update(self.to_env())
        env.update(extra)
        return env

    def resolved_runtime_dir(self) -> Path:
        """Where IPC sockets live; a fresh temp dir unless BERTH_RUNTIME_DIR is set."""
        if self.runtime_dir is not None:
            return self.runtime_dir
        return Path(tempfile.mkdtemp(prefix="berth-"))


def export_defaults(values: Mapping[str, str]) -> None:
    """Set variables that a library reads from the environment itself (vLLM's engine core, in the
    process it spawns); a value the user exported wins."""
    for key, value in values.items():
        os.environ.setdefault(key, value)
