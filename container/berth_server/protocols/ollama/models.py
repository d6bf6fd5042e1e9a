"""Ollama's view of Berth's models: `name:tag` resolution, /api/tags, /api/show, /api/ps and /api/version.

A running model is `<uid>:latest`; a custom registration that is not running is listed under its
name, so a tool sees what the operator added to Berth. Names resolve to a running uid (or the
default model's names), then to a running model launched from a registration of that name; a
registration that is not running, or any other name, is a 404 saying what to do.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from berth_server.client.state import FrontendState
from berth_server.errors import BerthError, InvalidRequest, NotFound
from berth_server.launch_config import ModelDescription

# The Ollama API version Berth speaks (clients gate features on it); Berth's own version is /info's.
OLLAMA_API_VERSION = "0.12.0"
LATEST = "latest"
# Model types an Ollama route can use (rerank models have no Ollama route).
_TYPES = ("LLM", "embedding")
_GONE = ("stopped", "stopping", "failed")
# Berth keeps a model loaded until it is terminated: Ollama's clients read a far expiry as "kept alive".
_NEVER_EXPIRES = "2318-01-01T00:00:00Z"
_DTYPE_LEVELS = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def iso(moment: float) -> str:
    """A Unix time as Ollama writes times (RFC 3339, UTC)."""
    return datetime.fromtimestamp(moment, timezone.utc).isoformat().replace("+00:00", "Z")


def base_name(name: str) -> str:
    """`name:tag` without its tag; every Berth model has only the `latest` tag."""
    base, _, tag = name.partition(":")
    if tag and tag != LATEST:
        raise NotFound(f"model '{name}' not found: Berth's models have only the ':{LATEST}' tag", param="model")
    return base


def _running_uids(state: FrontendState) -> list[str]:
    return [uid for uid, status in state.gateway.statuses().items()
            if status.get("state") not in _GONE and status.get("description")]


def resolve_target(state: FrontendState, name: str) -> tuple[str, str | None]:
    """(uid, adapter) an Ollama name means: a running model or an adapter of the default one, as
    `name` or `name:latest`, or a running model launched from the registration `name`; else a 404."""
    try:
        return state.gateway.resolve_target(name)  # a uid that itself holds a colon
    except NotFound:
        pass
    base = base_name(name)
    try:
        return state.gateway.resolve_target(base)
    except NotFound:
        pass
    for uid in _running_uids(state):
        if state.gateway.statuses()[uid]["description"].get("model_name") == base:
            return uid, None
    if _registration(state, base) is not None:
        raise NotFound(f"model '{name}' is registered with Berth but not running: launch it through the Xinference "
                       f"API (POST /v1/models {{\"model_name\": \"{base}\"}})", param="model")
    raise NotFound(f"model '{name}' not found: GET /api/tags lists the models Berth serves", param="model")


def resolve(state: FrontendState, name: str) -> str:
    """The running model's uid an Ollama name means (adapters not allowed); a 404 in Ollama's words otherwise."""
    uid, adapter = resolve_target(state, name)
    if adapter is not None:
        raise InvalidRequest(f"'{name}' is a LoRA adapter: it serves only /api/chat and /api/generate",
                             param="model")
    return uid


def _registration(state: FrontendState, name: str) -> dict[str, Any] | None:
    for model_type in _TYPES:
        try:
            found = state.control.call("registrations.get", model_type=model_type, name=name)
        except NotFound:
            continue
        if found:
            return {**found, "model_type": model_type}
    return None


def _size_label(count: float) -> str:
    """Parameters as Ollama writes them: 134.52M, 7.6B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(int(count))


def _details(description: ModelDescription) -> dict[str, Any]:
    family = description.architecture or description.model_name
    return {"parent_model": "", "format": description.weights_format or "",
            "family": family, "families": [family],
            "parameter_size": _size_label(description.parameter_count) if description.parameter_count else "",
            "quantization_level": description.quantization or _DTYPE_LEVELS.get(description.dtype,
                                                                                  description.dtype.upper())}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _running_entry(uid: str, description: ModelDescription, modified: float) -> dict[str, Any]:
    name = f"{uid}:{LATEST}"
    return {"name": name, "model": name, "modified_at": iso(modified), "size": description.size_bytes or 0,
            "digest": _digest(uid, description.source), "details": _details(description)}


def _registration_entry(registration: dict[str, Any], modified: float) -> dict[str, Any]:
    name = f"{registration['model_name']}:{LATEST}"
    spec = (registration.get("model_specs") or [{}])[0]
    size = str(spec.get("model_size_in_billions") or "").replace("_", ".")
    try:
        parameters = _size_label(float(size) * 1e9) if size else ""
    except ValueError:
        parameters = ""
    family = registration["model_name"]
    details = {"parent_model": "", "format": spec.get("model_format") or "", "family": family, "families": [family],
               "parameter_size": parameters, "quantization_level": spec.get("quantization") or ""}
    return {"name": name, "model": name, "modified_at": iso(modified), "size": 0,
            "digest": _digest(registration["model_name"], str(spec.get("model_uri") or spec.get("model_id"))),
            "details": details}


def described(state: FrontendState) -> dict[str, ModelDescription]:
    """Every model that is up and usable on an Ollama route, by uid."""
    found = {}
    for uid in _running_uids(state):
        try:
            found[uid] = state.gateway.describe(uid)
        except BerthError:
            continue  # stopped since the table was read
    return {uid: d for uid, d in found.items() if d.model_type in _TYPES}


def tags(state: FrontendState, modified: float) -> dict[str, Any]:
    """GET /api/tags: running models, then custom registrations that are not running."""
    running = described(state)
    models = [_running_entry(uid, d, modified) for uid, d in running.items()]
    taken = set(running) | {d.model_name for d in running.values()}
    for model_type in _TYPES:
        try:
            registrations = state.control.call("registrations.list", model_type=model_type, detailed=True) or []
        except BerthError:
            registrations = []  # the launcher is busy: list what runs
        models += [_registration_entry(r, modified) for r in registrations
                   if not r.get("is_builtin") and r.get("model_name") not in taken]
    return {"models": models}


def ps(state: FrontendState, modified: float) -> dict[str, Any]:
    """GET /api/ps: the running models, which stay loaded until terminated."""
    models = []
    for uid, description in described(state).items():
        entry = _running_entry(uid, description, modified)
        on_gpu = description.device.startswith("cuda")
        entry.update(expires_at=_NEVER_EXPIRES, size_vram=entry["size"] if on_gpu else 0,
                     context_length=description.context_length)
        models.append(entry)
    return {"models": models}


def capabilities(description: ModelDescription) -> list[str]:
    """What Ollama's clients may ask of the model (Copilot enables tools and thinking from these)."""
    if description.model_type == "embedding":
        return ["embedding"]
    found = ["completion"]
    template = description.chat_template or ""
    if description.tool_call_parser or "tools" in description.abilities or "tools" in template:
        found.append("tools")
    if description.reasoning:
        found.append("thinking")
    return found


def show(state: FrontendState, name: str, modified: float) -> dict[str, Any]:
    """POST /api/show: details, model_info (architecture, context length), template and capabilities."""
    uid = resolve(state, name)
    description = state.gateway.describe(uid)
    details = _details(description)
    arch = details["family"]
    info: dict[str, Any] = {"general.architecture": arch, "general.basename": description.model_name,
                            "general.parameter_count": description.parameter_count or 0,
                            f"{arch}.context_length": description.context_length}
    if description.dimensions:
        info[f"{arch}.embedding_length"] = description.dimensions
    return {"license": "", "modelfile": f"# served by Berth from {description.source} ({description.engine})\n",
            "parameters": "", "template": description.chat_template or "", "details": details,
            "model_info": info, "capabilities": capabilities(description), "modified_at": iso(modified)}
