"""LoRA adapters on the vLLM engine: checked like the transformers engine's, loaded with vLLM's add_lora.

vLLM batches rows with different adapters itself (its Punica kernels; PunicaWrapperCPU on the CPU
build). LoRA must be switched on when the engine starts (enable_lora), so it is on when adapters are
configured at launch or BERTH_ENABLE_LORA / SM_VLLM_ENABLE_LORA is true; adapters then load and
unload at run time. max_loras, max_lora_rank and max_cpu_loras are vLLM's own sizing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_server.errors import Conflict, InvalidRequest, NotFound
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings


def lora_wanted(config: ModelLaunchConfig, settings: Settings) -> bool:
    """Whether vLLM starts with LoRA: adapters configured for this model, or BERTH_ENABLE_LORA."""
    from berth_server.settings import parse_bool

    asked = str(config.engine_args.get("enable_lora", "false"))  # a launch body's vLLM argument
    return bool(settings.lora.enabled or config.adapters or (config.is_default and settings.lora.adapters)
                or parse_bool("enable_lora", asked))


def lora_kwargs(settings: Settings) -> dict[str, Any]:
    """vLLM's engine arguments for LoRA."""
    lora = settings.lora
    kwargs: dict[str, Any] = {"enable_lora": True, "max_loras": lora.max_loras, "max_lora_rank": lora.max_lora_rank}
    if lora.max_cpu_loras is not None:
        kwargs["max_cpu_loras"] = max(lora.max_cpu_loras, lora.max_loras)
    return kwargs


@dataclass
class _Adapter:
    request: Any  # vllm.lora.request.LoRARequest
    src: str
    rank: int
    pinned: bool


class VllmAdapters:
    """Registered adapters of one vLLM engine, by name."""

    def __init__(self, enabled: bool, max_rank: int):
        self.enabled = enabled
        self.max_rank = max_rank
        self._ids = itertools.count(1)
        self._by_name: dict[str, _Adapter] = {}

    async def add(self, llm: Any, name: str, src: str, folder: Path, pin: bool) -> dict[str, Any]:
        """Check the adapter, then load it into vLLM (which also checks it against the model)."""
        from vllm.lora.request import LoRARequest

        from berth_server.engines.lora_weights import read_config

        if not self.enabled:
            raise InvalidRequest("LoRA is off on this vLLM engine: it must be on at start (configure adapters,"
                                 " or set BERTH_ENABLE_LORA=true)", param="adapter")
        if name in self._by_name:
            raise Conflict(f"adapter '{name}' is already registered; remove it first")
        config = read_config(name, folder, self.max_rank)
        request = LoRARequest(lora_name=name, lora_int_id=next(self._ids), lora_path=str(folder))
        try:
            await llm.add_lora(request)
            if pin:
                await llm.pin_lora(request.lora_int_id)
        except Exception as exc:  # noqa: BLE001 - vLLM's own checks (modules, shapes) reject a foreign adapter
            raise InvalidRequest(f"adapter '{name}' does not fit this model: {exc}", param="src") from None
        self._by_name[name] = _Adapter(request, src, config.rank, pin)
        return self._describe(name)

    async def remove(self, llm: Any, name: str) -> None:
        """Unload an adapter from vLLM."""
        adapter = self._by_name.pop(name, None)
        if adapter is None:
            raise NotFound(f"adapter '{name}' not found")
        await llm.remove_lora(adapter.request.lora_int_id)

    def request_for(self, name: str | None) -> Any:
        """The LoRARequest a generation names (None for the base model); NotFound for unknown names."""
        if name is None:
            return None
        adapter = self._by_name.get(name)
        if adapter is None:
            raise NotFound(f"adapter '{name}' not found", param="adapter")
        return adapter.request

    def describe(self) -> list[dict[str, Any]]:
        """Every registered adapter."""
        return [self._describe(name) for name in self._by_name]

    def _describe(self, name: str) -> dict[str, Any]:
        adapter = self._by_name[name]
        return {"name": name, "src": adapter.src, "rank": adapter.rank, "pinned": adapter.pinned, "loaded": True}
