"""Model management for the launcher's control RPC: registrations and Xinference-style launch/describe."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from berth_spec.registration import AudioRegistration, ImageRegistration, LLMRegistration, Registration

from berth_server.errors import Conflict, InvalidRequest, NotFound
from berth_server.launch_config import ModelLaunchConfig, ModelStatus
from berth_server.models.launch_resolver import build_config, generated_uid, parse_launch
from berth_server.models.registry import Registry, model_type_or_400
from berth_server.process_memory import resident_bytes
from berth_server.settings import Settings
from berth_server.wire_values import as_bool

log = logging.getLogger("berth.management")
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# Xinference's instance states, from Berth's model states.
_INSTANCE_STATUS = {
    "starting": "CREATING", "downloading": "CREATING", "loading": "CREATING", "ready": "READY",
    "failed": "ERROR", "stopping": "TERMINATING", "stopped": "TERMINATED",
}


@dataclass
class Launched:
    """What management remembers about a model it launched (for describe)."""

    registration: Registration
    spec: Any
    created: float


def _registration_dict(registration: Registration) -> dict[str, Any]:
    return registration.model_dump(mode="json")


def enrich_default_config(config: ModelLaunchConfig, settings: Settings) -> ModelLaunchConfig:
    """Fill the default model's template facts (tags, stops, abilities) from the catalog when its hub id is known."""
    registry = Registry(None)
    for entry in registry.entries("LLM"):
        registration = entry.registration
        assert isinstance(registration, LLMRegistration)
        if any(spec.model_id == config.source for spec in registration.model_specs):
            thinking = registration.thinking_variable
            return msgspec.structs.replace(
                config, abilities=list(registration.model_ability), stop=list(registration.stop or []),
                stop_token_ids=list(registration.stop_token_ids or []),
                reasoning_start_tag=registration.reasoning_start_tag,
                reasoning_end_tag=registration.reasoning_end_tag, thinking_variable=thinking,
                context_length=config.context_length or registration.context_length,
                tool_call_parser=config.tool_call_parser or registration.tool_call_parser,
            )
    return config


class ModelManager:
    """Registrations plus launch/describe over a supervisor (the launcher's, or a fake in tests)."""

    def __init__(self, settings: Settings, supervisor: Any, registry: Registry | None = None) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.registry = registry or Registry(settings.home)
        self._launched: dict[str, Launched] = {}

    # -- registrations -------------------------------------------------------------------
    async def registrations_list(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """[{model_name, is_builtin}] or, with detailed, the full registrations."""
        detailed = as_bool(params.get("detailed", False), "detailed")
        entries = self.registry.entries(params.get("model_type") or "LLM")
        if detailed:
            return [_registration_dict(e.registration) for e in entries]
        return [{"model_name": e.registration.model_name, "is_builtin": e.registration.is_builtin} for e in entries]

    async def registrations_get(self, params: dict[str, Any]) -> dict[str, Any]:
        """One registration in full."""
        entry = self.registry.get(params.get("model_type") or "LLM", str(params.get("name") or ""))
        return _registration_dict(entry.registration)

    async def registrations_register(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and add a custom registration (persisted when asked)."""
        model = params.get("model")
        if not isinstance(model, str):
            raise InvalidRequest("'model' must be the registration JSON as a string", param="model")
        persist = as_bool(params.get("persist", False), "persist")
        registration, warnings = self.registry.register(params.get("model_type") or "LLM", model, persist)
        return {"model_name": registration.model_name, "persist": persist, "warnings": warnings}

    async def registrations_unregister(self, params: dict[str, Any]) -> dict[str, Any]:
        """Remove a custom registration."""
        self.registry.unregister(params.get("model_type") or "LLM", str(params.get("name") or ""))
        return {}

    # -- models ----------------------------------------------------------------------------
    async def launch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Xinference's POST /v1/models: resolve the registration and start a model process."""
        request = parse_launch(params)
        model_type = model_type_or_400(request.model_type)
        entry = self.registry.find(request.model_name, model_type)
        statuses = self.supervisor.statuses()
        active = {uid for uid, s in statuses.items() if s.state not in ("failed", "stopped")}
        uid = request.model_uid or generated_uid(request.model_name, set(statuses))
        if uid in active:
            raise Conflict(f"model uid {uid!r} is already running; terminate it or choose another uid")
        config = build_config(self.settings, entry.registration, model_type, request, uid)
        if request.ignored:
            log.warning("launch %s: ignoring %s (one machine, one environment)", uid, ", ".join(request.ignored))
        spec = next((s for s in entry.registration.model_specs
                     if config.source in (s.model_uri, s.model_id)), entry.registration.model_specs[0])
        previous = self._launched.get(uid)
        self._launched[uid] = Launched(entry.registration, spec, time.time())
        try:
            await self.supervisor.launch(config, request.wait_ready)
        except Conflict:
            # Someone else holds this uid: keep describing their model, not ours.
            if previous is not None:
                self._launched[uid] = previous
            raise
        return {"model_uid": uid}

    def _configs(self) -> dict[str, ModelLaunchConfig]:
        configs = getattr(self.supervisor, "configs", None)
        return configs() if configs is not None else {}

    def _replica_configs(self, uid: str) -> list[ModelLaunchConfig]:
        replica_configs = getattr(self.supervisor, "replica_configs", None)
        return replica_configs(uid) if replica_configs is not None else []

    def _status(self, uid: str) -> ModelStatus:
        status = self.supervisor.statuses().get(uid)
        if status is None:
            raise NotFound(f"model uid {uid!r} not found")
        return status

    def describe(self, uid: str) -> dict[str, Any]:
        """Xinference's model description (model_type, model_ability, ...) for one uid."""
        status = self._status(uid)
        config: ModelLaunchConfig | None = self._configs().get(uid)
        launched = self._launched.get(uid)
        description = status.description
        info: dict[str, Any] = {
            "model_uid": uid, "model_type": config.model_type if config else "LLM",
            "model_name": config.model_name if config else uid,
            "model_ability": list(config.abilities) if config else [], "state": status.state,
            "progress": 1.0 if status.state == "ready" else status.progress, "reason": status.reason,
            "model_engine": description.engine if description else (config.engine if config else None),
            "replica": config.replica if config else 1, "address": "", "accelerators": [],
            # Each replica: its index, the node it runs on ("local" or a Ray node id), its state and pid.
            "replicas": [{"index": r.index, "node": r.node, "state": r.state, "pid": r.pid} for r in status.replicas],
        }
        if config is not None and config.gpu_ids:
            info["accelerators"] = sorted({g for c in self._replica_configs(uid) for g in c.gpu_ids})
        if config is not None:
            info.update(context_length=config.context_length, model_hub="huggingface", revision=config.revision,
                        reasoning_start_tag=config.reasoning_start_tag, reasoning_end_tag=config.reasoning_end_tag)
        if description is not None:
            # The web UI's Memory column: every local replica's resident memory (a Ray node's pids are not ours).
            local = ([r.pid for r in status.replicas if r.node == "local" and r.pid] if status.replicas
                     else [description.pid])
            sizes = [resident_bytes(pid) for pid in local]
            info.update(context_length=description.context_length, pid=description.pid,
                        memory_bytes=sum(size for size in sizes if size) if any(sizes) else None)
        if launched is not None:
            reg = launched.registration
            info.update(model_description=getattr(reg, "model_description", None),
                        model_lang=getattr(reg, "model_lang", None) or getattr(reg, "language", []),
                        model_family=getattr(reg, "model_family", None) or reg.model_name,
                        model_format=launched.spec.model_format, quantization=launched.spec.quantization,
                        model_size_in_billions=getattr(launched.spec, "model_size_in_billions", None))
            if isinstance(reg, AudioRegistration):
                info.update(multilingual=reg.multilingual, model_family=reg.model_family,
                            default_model_config=reg.default_model_config)
            elif isinstance(reg, ImageRegistration):
                info.update(model_family=reg.model_family, default_model_config=reg.default_model_config)
            elif not isinstance(reg, LLMRegistration):
                info.update(max_tokens=reg.max_tokens, dimensions=getattr(reg, "dimensions", None))
        elif config is not None and config.model_family:
            info.update(model_family=config.model_family)
        if description is not None and description.media:
            info.update(media=description.media)
            if "voices" in description.media:
                info.update(voices=description.media["voices"])
            if "multilingual" in description.media:
                info.update(multilingual=description.media["multilingual"])
        return info

    async def models_get(self, params: dict[str, Any]) -> dict[str, Any]:
        """GET /v1/models/{uid}."""
        return self.describe(str(params.get("uid") or ""))

    async def models_list(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """{uid: description} for every model (Xinference's list_models shape)."""
        return {uid: self.describe(uid) for uid in self.supervisor.statuses()}

    async def models_progress(self, params: dict[str, Any]) -> dict[str, float]:
        """Launch progress, 0..1 (1 once ready)."""
        status = self._status(str(params.get("uid") or ""))
        return {"progress": 1.0 if status.state == "ready" else float(status.progress)}

    async def models_instances(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Xinference's instance info, filtered by model_name / model_uid when given."""
        configs = self._configs()
        result = []
        for uid, status in self.supervisor.statuses().items():
            config = configs.get(uid)
            name = config.model_name if config else uid
            if params.get("model_uid") and params["model_uid"] != uid:
                continue
            if params.get("model_name") and params["model_name"] != name:
                continue
            launched = self._launched.get(uid)
            result.append({
                "model_name": name, "model_uid": uid, "model_version": None,
                "model_ability": list(config.abilities) if config else [],
                "replica": config.replica if config else 1,
                "status": _INSTANCE_STATUS.get(status.state, status.state.upper()),
                "instance_created_ts": int(launched.created) if launched else None,
            })
        return result


def control_handlers(settings: Settings, supervisor: Any) -> dict[str, Handler]:
    """The model-management control methods, bound to one ModelManager."""
    manager = ModelManager(settings, supervisor)
    return {
        "registrations.list": manager.registrations_list,
        "registrations.get": manager.registrations_get,
        "registrations.register": manager.registrations_register,
        "registrations.unregister": manager.registrations_unregister,
        "models.launch": manager.launch,
        "models.list": manager.models_list,
        "models.get": manager.models_get,
        "models.progress": manager.models_progress,
        "models.instances": manager.models_instances,
    }
