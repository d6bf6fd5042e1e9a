"""The gateway's LoRA adapter calls for the fake gateways: adapters kept per model in a dict."""

from __future__ import annotations

from typing import Any

from berth_server.adapter_specs import AdapterSource
from berth_server.errors import NotFound
from berth_server.ipc import AdapterInfo


class FakeAdapters:
    """Mixin: add/remove/list adapters and resolve_target, as frontend/gateway.Gateway does."""

    def resolve_model(self, name: str | None) -> str:
        raise NotImplementedError

    @property
    def adapter_store(self) -> dict[str, list[AdapterInfo]]:
        """uid -> its adapters (made on first use)."""
        return self.__dict__.setdefault("_adapter_store", {})

    def add_adapter(self, uid: str, adapter: AdapterSource) -> list[AdapterInfo]:
        """Record the adapter."""
        self.adapter_store.setdefault(uid, []).append(AdapterInfo(name=adapter.name, src=adapter.src, rank=8,
                                                                  pinned=adapter.pin))
        return self.adapters(uid)

    def remove_adapter(self, uid: str, name: str) -> list[AdapterInfo]:
        """Forget it, or NotFound."""
        known = self.adapter_store.get(uid, [])
        if not any(a.name == name for a in known):
            raise NotFound(f"adapter '{name}' not found")
        self.adapter_store[uid] = [a for a in known if a.name != name]
        return self.adapters(uid)

    def adapters(self, uid: str, max_age_s: Any = None) -> list[AdapterInfo]:
        """The model's adapters."""
        return list(self.adapter_store.get(uid, []))

    def resolve_target(self, name: str | None) -> tuple[str, str | None]:
        """A model, or an adapter of the default model."""
        try:
            return self.resolve_model(name), None
        except NotFound:
            default = self.resolve_model(None)
            if any(a.name == name for a in self.adapters(default)):
                return default, name
            raise
