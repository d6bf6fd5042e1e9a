"""Turn an Xinference launch body plus a registration into a ModelLaunchConfig (no I/O beyond stat calls)."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from berth_spec.registration import (
    AudioRegistration,
    ImageRegistration,
    LLMRegistration,
    Registration,
    size_key,
)

from berth_server.adapter_specs import AdapterSource, from_peft_model_config
from berth_server.canonical import check_parser_name
from berth_server.checkpoint import chat_template
from berth_server.engines.facts import check_media_family
from berth_server.engines.facts import engine_name as canonical_engine
from berth_server.errors import InvalidRequest, WeightsNotFound
from berth_server.launch_config import ModelLaunchConfig
from berth_server.models.launch_keys import IGNORED_KEYS, check_engine_args
from berth_server.models.registry import check_chat_template, local_dir
from berth_server.models.roots import check_model_roots
from berth_server.models.sources import pick_gguf
from berth_server.replicas import check_replica_count
from berth_server.settings import Settings
from berth_server.wire_values import as_bool

log = logging.getLogger(__name__)

# Quantized weight formats the engines load natively (Xinference's model_format -> engine quantization).
_FORMAT_QUANTIZATION = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bnb": "bitsandbytes"}
_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class LaunchRequest:
    """The parsed launch body."""

    model_name: str
    model_type: str = "LLM"
    model_uid: str | None = None
    engine: str = "auto"
    model_format: str | None = None
    size: str | None = None
    quantization: str | None = None
    model_path: str | None = None
    enable_thinking: bool | None = None
    n_gpu: int | None = None
    replica: int = 1
    n_worker: int = 1
    n_cpu: float | None = None
    ray_resources: dict[str, float] = field(default_factory=dict)
    tool_call_parser: str | None = None
    wait_ready: bool = True
    engine_args: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    adapters: list[AdapterSource] = field(default_factory=list)  # Xinference's peft_model_config lora_list


def parse_launch(params: dict[str, Any]) -> LaunchRequest:
    """Validate Xinference's launch keys; the other non-null keys must be allowed engine arguments."""
    body = dict(params)
    name = body.pop("model_name", None)
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model_name is required", param="model_name")
    engine_name = body.pop("model_engine", None)
    engine = canonical_engine(str(engine_name) if engine_name else None, "model_engine")
    uid = body.pop("model_uid", None)
    if uid is not None and (not isinstance(uid, str) or not _UID_RE.match(uid)):
        raise InvalidRequest(f"model_uid {uid!r} is invalid: start with a letter or digit; use letters, digits, "
                             "'.', '_' and '-' (100 characters at most)", param="model_uid")
    request = LaunchRequest(
        model_name=name, model_type=body.pop("model_type", None) or "LLM", model_uid=uid, engine=engine,
        model_format=body.pop("model_format", None), quantization=body.pop("quantization", None),
        model_path=body.pop("model_path", None),
    )
    size = body.pop("model_size_in_billions", None)
    request.size = size_key(size) if size is not None else None
    thinking = body.pop("enable_thinking", None)
    request.enable_thinking = None if thinking is None else as_bool(thinking, "enable_thinking")
    request.wait_ready = as_bool(body.pop("wait_ready", True), "wait_ready")
    request.tool_call_parser = body.pop("tool_call_parser", None)
    n_gpu = body.pop("n_gpu", "auto")
    if n_gpu not in (None, "auto"):
        if not isinstance(n_gpu, int) or n_gpu < 1:
            raise InvalidRequest(f"n_gpu must be 'auto' or a positive integer, not {n_gpu!r}", param="n_gpu")
        request.n_gpu = n_gpu
    replica = body.pop("replica", None)
    request.replica = 1 if replica is None else check_replica_count(replica)
    request.n_cpu, request.ray_resources = _placement(body.pop("n_cpu", None), body.pop("ray_resources", None))
    n_worker = body.pop("n_worker", None)
    request.n_worker = 1 if n_worker in (None, 1) else _n_worker(n_worker, engine)
    request.adapters = from_peft_model_config(body.pop("peft_model_config", None))
    for key in IGNORED_KEYS:
        if body.pop(key, None) not in (None, 1, [], {}):
            request.ignored.append(key)
    # The rest are engine arguments: each must be on the engine's allowlist (models/launch_keys.py).
    request.engine_args = check_engine_args(engine, {k: v for k, v in body.items() if v is not None},
                                            request.model_type)
    return request


def choose_spec(registration: Registration, request: LaunchRequest) -> Any:
    """The first spec matching the requested format/size/quantization; InvalidRequest lists what exists."""
    for spec in registration.model_specs:
        if request.model_format and spec.model_format != request.model_format:
            continue
        if request.size and size_key(getattr(spec, "model_size_in_billions", None)) != request.size:
            continue
        if request.quantization and request.quantization.lower() not in [q.lower() for q in _quantizations(spec)]:
            continue
        return spec
    offered = ", ".join(
        f"{s.model_format}/{size_key(getattr(s, 'model_size_in_billions', None)) or '-'}/{'|'.join(_quantizations(s))}"
        for s in registration.model_specs
    )
    raise InvalidRequest(
        f"model {registration.model_name!r} has no spec with format={request.model_format}, "
        f"size={request.size}, quantization={request.quantization}; it offers (format/size/quantization): {offered}"
    )


def _quantizations(spec: Any) -> list[str]:
    """The quantizations a spec serves (a ggufv2 spec may list several)."""
    offered = getattr(spec, "offered_quantizations", None)
    return list(offered()) if offered is not None else [spec.quantization]


def gguf_source(spec: Any, request: LaunchRequest) -> tuple[str, str | None]:
    """(source, gguf_file) of a ggufv2 spec: the file itself, or a folder / s3 prefix / hub repo plus the
    file its model_file_name_template names for the chosen quantization (Xinference's rule)."""
    source = request.model_path or spec.model_uri or spec.model_id
    if source.lower().endswith(".gguf"):
        return source, None
    offered = _quantizations(spec)
    chosen = request.quantization or (spec.quantization if spec.quantization != "none" else offered[0])
    matched = [q for q in offered if q.lower() == chosen.lower()]
    return source, spec.gguf_file_name(matched[0] if matched else chosen)


def detect_thinking_variable(template: str | None) -> str | None:
    """The variable a chat template switches thinking with (Qwen3: enable_thinking, DeepSeek V3.1: thinking)."""
    if not template:
        return None
    if "enable_thinking" in template:
        return "enable_thinking"
    if re.search(r"\bthinking\b", template):
        return "thinking"
    return None


def _tokenizer_template(model_dir: Any) -> str | None:
    return None if model_dir is None else chat_template(model_dir)


def generated_uid(model_name: str, taken: set[str]) -> str:
    """Xinference's default: the model name itself, or name-<8 hex> when that uid is taken."""
    if model_name not in taken and _UID_RE.match(model_name):
        return model_name
    base = re.sub(r"[^A-Za-z0-9._-]", "-", model_name)[:80] or "model"
    return f"{base}-{uuid.uuid4().hex[:8]}"


def build_config(settings: Settings, registration: Registration, model_type: str, request: LaunchRequest,
                 uid: str) -> ModelLaunchConfig:
    """Resolve source, template facts and limits into the config a model process starts from."""
    spec = choose_spec(registration, request)
    source = request.model_path or spec.model_uri or spec.model_id
    check_model_roots(settings, source, "model_path" if request.model_path else "model_uri")
    gguf = spec.model_format == "ggufv2"
    gguf_file = gguf_source(spec, request)[1] if gguf else None
    # model_path and model_uri may be local; a model_id is a hub id, resolved in the model process.
    model_dir = local_dir(request.model_path or spec.model_uri)
    if model_dir is not None and not model_dir.exists():
        raise WeightsNotFound(f"model weights not found at {source!r}")
    if model_dir is not None and model_dir.is_dir() and gguf_file:
        pick_gguf(model_dir, gguf_file, source)  # fail the launch now, listing the files there
    common: dict[str, Any] = {
        "uid": uid, "source": source, "model_name": registration.model_name, "model_type": model_type,
        "revision": spec.model_revision, "engine": request.engine, "engine_args": request.engine_args,
        "trust_remote_code": settings.trust_remote_code,
        "tensor_parallel_size": request.n_gpu or settings.sm_num_gpus,
        "replica": request.replica, "n_gpu": request.n_gpu, "n_cpu": request.n_cpu,
        "ray_resources": dict(request.ray_resources), "n_worker": request.n_worker,
        "quantization": _FORMAT_QUANTIZATION.get(spec.model_format.lower()), "dtype": settings.dtype,
        "gguf_file": gguf_file,
    }
    if isinstance(registration, (AudioRegistration, ImageRegistration)):
        if request.enable_thinking is not None or request.adapters:
            raise InvalidRequest(f"enable_thinking and peft_model_config apply to LLMs, not {model_type} models")
        # A family no engine serves is refused now; whether the files are that engine's is checked at load.
        check_media_family(model_type, registration.model_family, request.engine)
        return ModelLaunchConfig(**{**common, "quantization": None}, abilities=list(registration.model_ability),
                                 model_family=registration.model_family,
                                 default_model_config=dict(registration.default_model_config or {}))
    if not isinstance(registration, LLMRegistration):
        if request.enable_thinking is not None:
            raise InvalidRequest("enable_thinking applies to LLMs only", param="enable_thinking")
        if request.adapters:
            raise InvalidRequest("peft_model_config applies to LLMs only", param="peft_model_config")
        ability = "embed" if model_type == "embedding" else "rerank"
        return ModelLaunchConfig(**common, abilities=[ability], dimensions=getattr(registration, "dimensions", None),
                                 context_length=registration.max_tokens)
    check_chat_template(registration, model_dir)
    thinking_variable = registration.thinking_variable
    if thinking_variable is None and "reasoning" in registration.model_ability:
        thinking_variable = detect_thinking_variable(registration.chat_template or _tokenizer_template(model_dir))
    _check_thinking(registration, thinking_variable, request.enable_thinking)
    return ModelLaunchConfig(
        **common, abilities=list(registration.model_ability), chat_template=registration.chat_template,
        stop=list(registration.stop or []), stop_token_ids=list(registration.stop_token_ids or []),
        reasoning_start_tag=registration.reasoning_start_tag, reasoning_end_tag=registration.reasoning_end_tag,
        thinking_variable=thinking_variable, default_enable_thinking=request.enable_thinking,
        # A GGUF file states its context length; a registration overrides it only when it says one.
        context_length=registration.context_length
        if not gguf or "context_length" in registration.model_fields_set else None,
        max_input_tokens=settings.max_input_tokens, max_total_tokens=settings.max_total_tokens,
        tool_call_parser=_tool_call_parser(request.tool_call_parser or registration.tool_call_parser),
        adapters=list(request.adapters),
    )


def _n_worker(value: object, engine: str) -> int:
    """Xinference's n_worker: vLLM's Ray executor over that many pipeline stages (a Ray cluster, vLLM only)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise InvalidRequest(f"n_worker must be an integer from 1 to 64, not {value!r}", param="n_worker")
    if engine not in ("vllm", "auto"):
        raise InvalidRequest("n_worker > 1 runs vLLM's Ray executor: it needs model_engine vllm", param="n_worker")
    return value


def _placement(n_cpu: object, resources: object) -> tuple[float | None, dict[str, float]]:
    """The launch's Ray placement keys: n_cpu (CPUs per replica) and ray_resources ({name: amount})."""
    if n_cpu is not None and (isinstance(n_cpu, bool) or not isinstance(n_cpu, (int, float)) or n_cpu <= 0):
        raise InvalidRequest(f"n_cpu must be a positive number, not {n_cpu!r}", param="n_cpu")
    if resources is None:
        resources = {}
    if not isinstance(resources, dict) or not all(
            isinstance(k, str) and k and not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
            for k, v in resources.items()):
        raise InvalidRequest("ray_resources must map resource names to positive amounts, as Ray's resources do",
                             param="ray_resources")
    return (None if n_cpu is None else float(n_cpu)), {k: float(v) for k, v in resources.items()}


def _tool_call_parser(name: object) -> str | None:
    """The launch body's (else the family's) tool-call parser; InvalidRequest when Berth has none by that name."""
    if name is not None and not isinstance(name, str):
        raise InvalidRequest(f"tool_call_parser must be a string, not {name!r}", param="tool_call_parser")
    try:
        return check_parser_name(name)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="tool_call_parser") from None


def _check_thinking(registration: LLMRegistration, variable: str | None, enable: bool | None) -> None:
    """Switching thinking needs a template variable for it; say so instead of silently ignoring it."""
    if enable is None:
        return
    if "reasoning" not in registration.model_ability:
        raise InvalidRequest(f"model {registration.model_name!r} does not reason; enable_thinking does not apply",
                             param="enable_thinking")
    if variable is None and not enable:
        raise InvalidRequest(f"model {registration.model_name!r} always thinks: its chat template cannot switch "
                             "thinking off", param="enable_thinking")
