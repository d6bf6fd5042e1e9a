"""What the launcher says about the models: the model table (state, replicas, descriptions) and name resolution.

Read from the table file the launcher writes (model_table.py: one stat() per look, no RPC), or over
control RPC where no table exists (test doubles). The Gateway builds on this with the sockets to the
model processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from berth_server.errors import BerthError, NotFound, NotReady
from berth_server.launch_config import ModelDescription
from berth_server.model_table import TableReader, table_path
from berth_server.replicas import ready_replicas
from berth_server.settings import Settings


class ModelFacts:
    """Model states and descriptions, and which uid a request's model name means."""

    def __init__(self, settings: Settings, control: Any, runtime_dir: Path, status_ttl_s: float) -> None:
        self.settings = settings
        self.control = control
        self.runtime_dir = runtime_dir
        self.status_ttl_s = status_ttl_s
        self._status: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._table = TableReader(table_path(self.runtime_dir))
        self._table_version = -1

    def _models_changed(self, statuses: dict[str, dict[str, Any]]) -> None:
        """Called when the model table has a new version (the Gateway closes sockets to models now gone)."""

    def statuses(self, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """{uid: ModelStatus as dict}: the launcher's model table, always current.

        Without a table file (a launcher that does not write one: test doubles) the launcher is asked
        over control RPC, cached for status_ttl_s.
        """
        if self._table.exists():
            statuses = self._table.models()
            if self._table.version != self._table_version:
                self._table_version = self._table.version
                self._models_changed(statuses)
            return statuses
        max_age = self.status_ttl_s if max_age_s is None else max_age_s
        fetched_at, statuses = self._status
        if time.monotonic() - fetched_at > max_age:
            statuses = self.control.call("status") or {}
            self._status = (time.monotonic(), statuses)
        return statuses

    def resolve_model(self, name: str | None) -> str:
        """The uid a request's model name means; None/""/"tgi"/the default id mean the default model.

        "default" means it too unless a running model has that uid: OpenAI clients need some model
        name, and the README's examples write "default" whatever HF_MODEL_ID is (demo://smollm2).
        """
        default = self.settings.default_model_uid
        if name in (None, "", "tgi", default, self.settings.hf_model_id):
            return default
        if name in self.statuses():
            return name  # type: ignore[return-value]
        if name == "default":
            return default
        raise NotFound(f"model '{name}' not found")

    def describe(self, uid: str) -> ModelDescription:
        """What a ready model reports about itself (from the launcher's status)."""
        status = self.statuses().get(uid)
        if status is None:
            raise NotFound(f"model '{uid}' not found")
        description = status.get("description")
        if not description:
            raise NotReady(f"model '{uid}' is {status.get('state', 'not ready')}")
        return msgspec.convert(description, ModelDescription)

    def default_ready(self) -> bool:
        """True when the launcher reports the default model as ready (short cache)."""
        try:
            status = self.statuses(max_age_s=0.5).get(self.settings.default_model_uid)
        except BerthError:
            return False
        return status is not None and status.get("state") == "ready"

    def _replica(self, uid: str, index: int) -> dict[str, Any]:
        """The model table's entry for one replica ({} when the table does not list it)."""
        try:
            listed = (self.statuses().get(uid) or {}).get("replicas") or []
        except BerthError:
            return {}
        return next((r for r in listed if r.get("index") == index), {})

    def replica_indices(self, uid: str) -> list[int]:
        """The ready replicas of uid (all of them get an adapter change; /metrics asks each)."""
        try:
            return [int(r["index"]) for r in ready_replicas(self.statuses().get(uid) or {})]
        except BerthError:
            return []
