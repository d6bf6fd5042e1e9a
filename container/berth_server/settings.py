"""The one place that reads the environment: a frozen snapshot of every setting Berth honours."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Re-exported: callers import SettingsError and parse_bool from here.
from berth_server.canonical import check_parser_name
from berth_server.settings_values import (
    SettingsError,
    env_first_int,
    env_float,
    env_int,
    parse_bool,
)

# Berth's own name first, then vLLM's server option as vLLM and the AWS vLLM container spell it.
TOOL_CALL_PARSER_VARS = ("BERTH_TOOL_CALL_PARSER", "BERTH_VLLM_TOOL_CALL_PARSER", "SM_VLLM_TOOL_CALL_PARSER")


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


def setting(default: Any, *names: str, kind: Kind = "str", minimum: int = 0, export: bool = True,
            factory: Callable[[], Any] | None = None, secret: bool = False) -> Any:
    """A setting, declared once: its default, the variables that set it (the first one set wins; the first
    name is the one a child process gets) and how its value is read. A secret never shows in repr()."""
    metadata = {"env": names, "kind": kind, "minimum": minimum, "export": export}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


Kind = Literal["str", "upper", "lower", "int", "float", "bool", "path"]
_UNSET = object()


@dataclass(frozen=True)
class Settings:
    """Everything configurable, read once. Tests construct it directly."""

    # The default model (TGI / SageMaker names).
    hf_model_id: str | None = setting(None, "HF_MODEL_ID", "MODEL_ID")
    hf_model_revision: str | None = setting(None, "HF_MODEL_REVISION", "REVISION")
    # The file to serve when HF_MODEL_ID is a GGUF repo or folder.
    hf_model_gguf_file: str | None = setting(None, "HF_MODEL_GGUF_FILE")
    model_uid: str | None = setting(None, "BERTH_MODEL_UID")  # else HF_MODEL_ID; else "default"
    trust_remote_code: bool = setting(False, "HF_MODEL_TRUST_REMOTE_CODE", "TRUST_REMOTE_CODE", kind="bool")
    quantize: str | None = setting(None, "HF_MODEL_QUANTIZE", "QUANTIZE")
    dtype: str | None = setting(None, "DTYPE", "BERTH_DTYPE")
    sm_num_gpus: int = setting(1, "SM_NUM_GPUS", "NUM_SHARD", kind="int", minimum=1)
    # Limits (TGI names).
    max_input_tokens: int | None = setting(None, "MAX_INPUT_TOKENS", "MAX_INPUT_LENGTH", kind="int", minimum=1)
    max_total_tokens: int | None = setting(None, "MAX_TOTAL_TOKENS", kind="int", minimum=1)
    max_batch_prefill_tokens: int | None = setting(None, "MAX_BATCH_PREFILL_TOKENS", kind="int", minimum=1)
    max_concurrent_requests: int = setting(128, "MAX_CONCURRENT_REQUESTS", kind="int", minimum=1)
    max_body_bytes: int = setting(6 * 1024 * 1024, "BERTH_MAX_BODY_BYTES", kind="int", minimum=1)
    messages_api_enabled: bool = setting(False, "MESSAGES_API_ENABLED", kind="bool")
    # Routes that change state (launch, terminate, register) which /invocations may still reach with
    # route=...: comma-separated globs over the path ("*" for all); by default none.
    invocations_routes: str | None = setting(None, "BERTH_INVOCATIONS_ROUTES")
    # SageMaker's stateful sessions (/invocations {"requestType": "NEW_SESSION"|"CLOSE"}, the session header),
    # as the model-hosting-container standard names them; a session lives this many seconds from its creation.
    stateful_sessions: bool = setting(False, "BERTH_ENABLE_STATEFUL_SESSIONS", "SAGEMAKER_ENABLE_STATEFUL_SESSIONS",
                                      kind="bool")
    session_ttl_s: int = setting(1200, "BERTH_SESSIONS_EXPIRATION", "SAGEMAKER_SESSIONS_EXPIRATION", kind="int",
                                 minimum=1)
    # Audio and image limits (OpenAI's: 25 MB uploads, 4096 characters of speech input).
    max_audio_bytes: int = setting(25 * 1000 * 1000, "BERTH_MAX_AUDIO_BYTES", kind="int", minimum=1)
    max_audio_seconds: float = setting(1800.0, "BERTH_MAX_AUDIO_SECONDS", kind="float")
    max_speech_chars: int = setting(4096, "BERTH_MAX_SPEECH_CHARS", kind="int", minimum=1)
    max_image_pixels: int = setting(1024 * 1024, "BERTH_MAX_IMAGE_PIXELS", kind="int", minimum=1)
    max_image_steps: int = setting(100, "BERTH_MAX_IMAGE_STEPS", kind="int", minimum=1)
    max_images: int = setting(10, "BERTH_MAX_IMAGES", kind="int", minimum=1)
    # Network. SageMaker tells the container its port with SAGEMAKER_BIND_TO_PORT; TGI users set PORT.
    host: str = setting("0.0.0.0", "BERTH_HOST")
    port: int = setting(8080, "PORT", "SAGEMAKER_BIND_TO_PORT", kind="int", minimum=1)
    # Berth's own.
    # BERTH_ENGINE as written (lower case); the engines name themselves, so the launcher checks and
    # canonicalizes it at start (with_engine_checked), never a module below engines/.
    engine: str = setting("auto", "BERTH_ENGINE", kind="lower")
    home: Path = setting(None, "BERTH_HOME", kind="path", factory=lambda: Path.home() / ".berth")
    api_key: str | None = setting(None, "BERTH_API_KEY", secret=True)
    metrics_public: bool = setting(False, "BERTH_METRICS_PUBLIC", kind="bool")  # /metrics without the API key
    # BERTH_MODEL_ROOTS: launches read local weights only from under these (read in from_env).
    model_roots: tuple[Path, ...] = ()
    workers: int = setting(1, "BERTH_WORKERS", kind="int", minimum=1)
    graceful_timeout_s: float = setting(25.0, "BERTH_GRACEFUL_TIMEOUT", kind="float")
    model_load_timeout_s: float = setting(3600.0, "BERTH_MODEL_LOAD_TIMEOUT", kind="float")
    max_model_restarts: int = setting(3, "BERTH_MAX_MODEL_RESTARTS", kind="int")
    # Replicas of the default model (issue 22): each its own model process and engine (replicas.py).
    replicas: int = setting(1, "BERTH_REPLICAS", kind="int", minimum=1)
    # A Ray cluster to place replicas on ("auto" or host:port); None: every replica runs on this machine.
    ray_address: str | None = setting(None, "BERTH_RAY_ADDRESS")
    sagemaker_model_dir: Path = setting(Path("/opt/ml/model"), "BERTH_SAGEMAKER_MODEL_DIR", kind="path")
    runtime_dir: Path | None = setting(None, "BERTH_RUNTIME_DIR", kind="path")
    log_level: str = setting("INFO", "BERTH_LOG_LEVEL", kind="upper")
    device: str = setting("auto", "BERTH_DEVICE")
    max_batch_size: int = setting(32, "BERTH_MAX_BATCH_SIZE", kind="int", minimum=1)
    kv_cache_gb: float | None = setting(None, "BERTH_KV_CACHE_GB", kind="float")
    # Settings only one engine reads are declared beside it (engines/engine_settings.py).
    s3_endpoint_url: str | None = setting(None, "BERTH_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    download_workers: int = setting(8, "BERTH_DOWNLOAD_WORKERS", kind="int", minimum=1)
    tool_call_parser: str | None = None  # the default model's (TOOL_CALL_PARSER_VARS, read in from_env)
    # Set by the launcher for gunicorn's workers; prometheus_client reads the same variable itself.
    prometheus_multiproc_dir: str | None = setting(None, "PROMETHEUS_MULTIPROC_DIR", export=False)
    # BERTH_REQUEST_TIMEOUT: a request's whole budget in its model (0 or unset: none).
    request_timeout_s: float | None = setting(None, "BERTH_REQUEST_TIMEOUT", kind="float")
    # BERTH_STREAM_BUFFER: events one request may have waiting in a worker.
    stream_buffer_events: int = setting(8192, "BERTH_STREAM_BUFFER", kind="int", minimum=16)
    # OpenAI Responses' store (stored responses, shared by every worker, under the runtime dir): the oldest
    # go first once either bound is passed; 0 keeps nothing.
    responses_store_max_count: int = setting(1000, "BERTH_RESPONSES_STORE_MAX_COUNT", kind="int", minimum=0)
    responses_store_max_bytes: int = setting(64 * 1024 * 1024, "BERTH_RESPONSES_STORE_MAX_BYTES", kind="int",
                                             minimum=0)
    # Set for the processes Berth starts, by the launcher or a Ray actor; never passed on (export=False).
    cuda_visible_devices: str | None = setting(None, "CUDA_VISIBLE_DEVICES", export=False)  # the GPUs to hand out
    die_with_parent_pid: int | None = setting(None, "BERTH_DIE_WITH_PARENT", kind="int", minimum=1, export=False)
    # A model process on another node (a Ray replica) listens on TCP with CURVE keys (model_process/remote.py).
    remote_bind_host: str | None = setting(None, "BERTH_BIND_HOST", export=False)
    remote_server_secret: str | None = setting(None, "BERTH_CURVE_SERVER_SECRET", export=False, secret=True)
    remote_client_public: str | None = setting(None, "BERTH_CURVE_CLIENT_PUBLIC", export=False)
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
        env: dict[str, str] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("export") and value is not None:
                env[spec.metadata["env"][0]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if self.model_roots:
            env["BERTH_MODEL_ROOTS"] = os.pathsep.join(str(root) for root in self.model_roots)
        if self.tool_call_parser:
            env["BERTH_TOOL_CALL_PARSER"] = self.tool_call_parser
        env.update(self.lora.to_env())
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment once (os.environ unless given) into a Settings."""
        values, env = read_declared(cls, env)
        if values.get("request_timeout_s") == 0:
            values["request_timeout_s"] = None  # 0 means no budget
        roots = (env.get("BERTH_MODEL_ROOTS") or "").replace(",", os.pathsep).split(os.pathsep)
        return cls(**values,  # type: ignore[arg-type]
                   model_roots=tuple(Path(part).expanduser() for part in roots if part.strip()),
                   tool_call_parser=_tool_call_parser(env), lora=_lora_settings(env))

    def child_environment(self, **extra: str) -> dict[str, str]:
        """The environment for a child process: ours, these settings, and `extra` on top."""
        return inherited_environment() | self.to_env() | extra

    def resolved_runtime_dir(self) -> Path:
        """Where IPC sockets live; a fresh temp dir unless BERTH_RUNTIME_DIR is set."""
        if self.runtime_dir is not None:
            return self.runtime_dir
        return Path(tempfile.mkdtemp(prefix="berth-"))


def inherited_environment() -> dict[str, str]:
    """A copy of this process's whole environment: what a child started from here begins with."""
    return dict(os.environ)


def read_declared(cls: type, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], Mapping[str, str]]:
    """The values of `cls`'s setting() fields that the environment sets (os.environ unless given), and that env."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if "env" in spec.metadata:
            value = _read_setting(env, spec.metadata)
            if value is not _UNSET:
                values[spec.name] = value
    return values, env


def export_defaults(values: Mapping[str, str]) -> None:
    """Set variables that a library reads from the environment itself (vLLM's engine core, in the
    process it spawns); a value the user exported wins."""
    for key, value in values.items():
        os.environ.setdefault(key, value)


def _read_setting(env: Mapping[str, str], metadata: Mapping[str, Any]) -> Any:
    """The value of the first of a setting's variables that is set (not blank), read as its kind; else _UNSET.

    SAGEMAKER_BIND_TO_PORT outranks PORT: of a setting's names, those that only SageMaker sets come first.
    """
    names = sorted(metadata["env"], key=lambda name: not name.startswith("SAGEMAKER_"))
    name = next((n for n in names if (env.get(n) or "").strip()), None)
    if name is None:
        return _UNSET
    raw, kind = env[name], metadata["kind"]
    if kind == "bool":
        return parse_bool(name, raw)
    if kind == "int":
        return env_int(env, name, None, metadata["minimum"])
    if kind == "float":
        return env_float(env, name, None)
    if kind == "path":
        return Path(raw).expanduser()
    if kind == "lower":
        return raw.strip().lower()
    return raw.upper() if kind == "upper" else raw
