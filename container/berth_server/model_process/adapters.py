"""LoRA adapter management in the model process: resolve an adapter's source like weights, hand it to the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

import msgspec

from berth_server import ipc
from berth_server.adapter_specs import AdapterSource, check_adapter_name
from berth_server.engines.base import Engine
from berth_server.errors import BerthError, InvalidRequest, WeightsNotFound
from berth_server.model_process.adapter_store import AdapterStore
from berth_server.settings import Settings

log = logging.getLogger(__name__)


async def resolve_adapter_source(adapter: AdapterSource, settings: Settings) -> Path:
    """A local folder for the adapter's src (local folder, file://, s3:// prefix, .tar.gz or hub id)."""
    from berth_server.models.sources import resolve_source

    check_adapter_name(adapter.name)
    if not adapter.src:
        raise InvalidRequest(f"adapter '{adapter.name}': src is empty", param="src")
    try:
        return await asyncio.to_thread(resolve_source, adapter.src, settings)
    except WeightsNotFound as exc:
        raise InvalidRequest(f"adapter '{adapter.name}': {exc.message}", param="src") from None


async def add_adapter(engine: Engine, settings: Settings, adapter: AdapterSource) -> None:
    """Resolve and register one adapter on the engine."""
    folder = await resolve_adapter_source(adapter, settings)
    await engine.add_adapter(adapter.name, adapter.src, folder, pin=adapter.pin)
    log.info("adapter %s registered from %s", adapter.name, adapter.src)


async def add_adapters(engine: Engine, settings: Settings, adapters: Iterable[AdapterSource]) -> None:
    """Register the adapters a model is launched with (LORA_ADAPTERS, peft_model_config)."""
    for adapter in adapters:
        await add_adapter(engine, settings, adapter)


async def reapply_stored_adapters(engine: Engine, settings: Settings, store: AdapterStore) -> None:
    """Register again the adapters added at run time before a restart; one that fails is logged and skipped."""
    registered = {a["name"] for a in engine.adapters()}
    for adapter in store.load():
        if adapter.name in registered:
            continue  # a launch adapter of the same name came first
        try:
            await add_adapter(engine, settings, adapter)
        except BerthError as exc:
            log.warning("adapter %s (from %s) was not registered again after the restart: %s",
                        adapter.name, adapter.src, exc.message)


async def handle_adapter_message(engine: Engine | None, settings: Settings, store: AdapterStore | None,
                                 message: ipc.AdapterAdd | ipc.AdapterRemove | ipc.AdapterQuery) -> ipc.Adapters:
    """Apply an adapter message (recording it for restarts) and answer with the adapters registered afterwards."""
    if engine is None:
        raise InvalidRequest("this model does not generate text, so it takes no LoRA adapters", param="adapter")
    if isinstance(message, ipc.AdapterAdd):
        await add_adapter(engine, settings, message.adapter)
        if store is not None:
            try:
                await asyncio.to_thread(store.record, message.adapter)
            except BaseException:
                await engine.remove_adapter(message.adapter.name)  # not recorded: not registered either
                raise
    elif isinstance(message, ipc.AdapterRemove):
        await engine.remove_adapter(message.name)
        if store is not None:
            await asyncio.to_thread(store.forget, message.name)
    return ipc.Adapters(request_id=message.request_id,
                        adapters=[msgspec.convert(a, ipc.AdapterInfo) for a in engine.adapters()])
