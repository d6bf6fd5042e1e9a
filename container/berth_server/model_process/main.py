"""The model process's life: report starting, resolve weights, load the engine, serve, stop on SIGTERM.

Status goes to the launcher's PULL socket as ModelStatus messages. A load failure is reported as
'failed' with a one-line reason and the process exits with EXIT_LOAD_FAILED at once; SIGTERM
stops intake, lets in-flight requests finish for a few seconds, shuts the engine down, exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import msgspec
import zmq

from berth_server import checkpoint, control, ipc
from berth_server.engines.base import Engine, EngineLoadInfo
from berth_server.errors import BerthError
from berth_server.launch_config import (
    MEDIA_TYPES,
    ModelDescription,
    ModelLaunchConfig,
    ModelState,
    ModelStatus,
)
from berth_server.model_process.server import ModelServer
from berth_server.process_tree import arm_for_parent
from berth_server.settings import Settings, SettingsError

log = logging.getLogger("berth_server.model_process")

EXIT_LOAD_FAILED = 3
EXIT_BAD_ARGUMENTS = 2
DRAIN_S = 3.0  # in-flight requests get this long after SIGTERM before they are aborted
ENGINE_SHUTDOWN_S = 5.0  # the launcher kills a model process 10 s after SIGTERM


class StatusReporter:
    """PUSHes ModelStatus to the launcher; safe to call from the download thread."""

    def __init__(self, runtime_dir: Path, uid: str, replica: int = 0):
        self.uid = uid
        self.replica = replica
        self.address: str | None = None  # set once bound, when not the default ipc path (a remote replica)
        self._lock = threading.Lock()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 1000)  # a final 'failed' must reach the launcher before exit
        self._socket.connect(f"ipc://{runtime_dir}/status.sock")

    def push(self, state: ModelState, *, reason: str | None = None, progress: float = 0.0,
             description: ModelDescription | None = None, error_type: str | None = None) -> None:
        """Send one status; never blocks (a missing launcher just loses it)."""
        status = ModelStatus(uid=self.uid, state=state, reason=reason, progress=progress,
                             description=description, error_type=error_type, replica=self.replica,
                             address=self.address)
        with self._lock, contextlib.suppress(zmq.Again):
            self._socket.send(control.encode(status), flags=zmq.NOBLOCK)

    def close(self) -> None:
        """Flush (bounded by LINGER) and close."""
        self._socket.close()
        self._context.term()


def one_line_reason(exc: BaseException) -> str:
    """A failure as one readable line (BerthError messages as they are)."""
    text = exc.message if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


class ModelProcess:
    """Loads one model and serves it until told to stop."""

    def __init__(self, config: ModelLaunchConfig, settings: Settings):
        self.config = config
        self.settings = settings
        self.runtime_dir = settings.resolved_runtime_dir()
        self.status = StatusReporter(self.runtime_dir, config.uid, config.replica_index)
        self.engine: Engine | None = None
        self.encoder: Any = None
        self.media: Any = None

    async def run(self) -> int:
        """The whole life; returns the exit code."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.status.push("starting")
        load = asyncio.ensure_future(self._load())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not load.done():
            log.info("model %s: terminated while loading", self.config.uid)
            load.cancel()
            await self._shutdown_engine()
            self.status.push("stopped", reason="terminated while loading")
            return 0
        stopped.cancel()
        try:
            server, description = load.result()
        except Exception as exc:
            reason = one_line_reason(exc)
            log.error("model %s failed to load: %s", self.config.uid, reason,
                      exc_info=not isinstance(exc, BerthError))
            error_type = exc.error_type if isinstance(exc, BerthError) else "generation"
            self.status.push("failed", reason=reason, error_type=error_type)
            await self._shutdown_engine()
            return EXIT_LOAD_FAILED
        self.status.push("ready", progress=1.0, description=description)
        log.info("model %s ready on %s (%s on %s)", self.config.uid, server.address, description.engine,
                 description.device)
        try:
            await server.serve(stop)
        finally:
            self.status.push("stopping")
            await server.drain(DRAIN_S)
            server.close()
            await self._shutdown_engine()
            self.status.push("stopped")
        return 0

    def _progress(self, fraction: float, message: str) -> None:
        self.status.push("downloading", progress=max(0.0, min(1.0, fraction)), reason=message or None)

    async def _load(self) -> tuple[ModelServer, ModelDescription]:
        """Resolve weights, build and start the engine (or encoder service), bind the ROUTER."""
        from berth_server.models.sources import resolve_source

        config, settings = self.config, self.settings
        model_dir = await asyncio.to_thread(resolve_source, config.source, settings, config.revision,
                                            self._progress, config.gguf_file)
        self.status.push("loading")
        from berth_server.model_process.remote import remote_binding, secure_router

        binding = remote_binding(settings)  # a replica on another node: TCP with CURVE keys
        address = binding.address if binding else ipc.model_socket_address(self.runtime_dir, config.uid,
                                                                           config.replica_index)
        facts = weights_facts(model_dir, config)
        media: dict[str, Any] = {}
        if config.model_type in ("embedding", "rerank"):
            info, server = await self._load_encoder(model_dir, address)
            limits = (info.max_model_len, info.max_model_len)
        elif config.model_type in MEDIA_TYPES:
            from berth_server.model_process.media_service import create_media_service

            self.media = await asyncio.to_thread(create_media_service, config, model_dir, settings)
            info = await self.media.start()
            media = self.media.describe()
            server = ModelServer(settings, address, media=self.media)
            limits = (info.max_model_len, info.max_model_len)
        else:
            from berth_server.engines.select import start_engine
            from berth_server.model_process.adapter_store import AdapterStore
            from berth_server.model_process.adapters import reapply_stored_adapters
            from berth_server.model_process.fill_in_middle import fim_markers
            from berth_server.model_process.text_pipeline import TextPipeline

            self.engine, info = await start_engine(config, model_dir, settings)
            await self._add_launch_adapters()
            store = AdapterStore.for_model(config.uid, self.runtime_dir, settings.home)
            await reapply_stored_adapters(self.engine, settings, store)
            pipeline = await asyncio.to_thread(TextPipeline.load, model_dir, config, settings, info.max_model_len)
            server = ModelServer(settings, address, engine=self.engine, pipeline=pipeline, adapter_store=store,
                                 sessions=self._session_registry(address))
            limits = (pipeline.limits.max_input, pipeline.limits.max_total)
            template = pipeline.tokenizer.chat_template
            facts["chat_template"] = template if isinstance(template, str) else None
            facts["fill_in_middle"] = fim_markers(pipeline.tokenizer)
        if binding is not None:
            server.secure = lambda socket, context: secure_router(socket, context, binding)
        server.bind()
        if binding is not None:
            self.status.address = server.address
        description = ModelDescription(
            uid=config.uid, model_name=config.model_name, model_type=config.model_type, source=config.source,
            engine=info.engine, device=info.device, dtype=info.dtype, abilities=list(config.abilities),
            max_input_tokens=limits[0], max_total_tokens=limits[1], context_length=info.max_model_len,
            max_batch_size=info.max_batch_size, pid=os.getpid(),
            reasoning=bool(config.reasoning_start_tag and config.reasoning_end_tag),
            dimensions=info.extra.get("dimensions", config.dimensions), tool_call_parser=config.tool_call_parser,
            media=media, **facts)
        return server, description

    def _session_registry(self, address: str) -> Any:
        """The model's stateful-session registry (kept beside its socket), or None when sessions are off."""
        if not self.settings.stateful_sessions:
            return None
        from berth_server.model_process.sessions import SessionRegistry

        digest = address.rsplit("/m-", 1)[-1].removesuffix(".sock")
        return SessionRegistry.for_model(self.settings.session_ttl_s, self.runtime_dir, digest)

    async def _add_launch_adapters(self) -> None:
        """Register the adapters the model is launched with; a bad one fails the launch, naming it."""
        from berth_server.adapter_specs import AdapterSource

        adapters = list(self.config.adapters)
        if self.config.is_default:  # TGI's LORA_ADAPTERS belongs to the default model
            adapters += [AdapterSource(name=name, src=src) for name, src in self.settings.lora.adapters]
        if adapters and self.engine is not None:
            from berth_server.model_process.adapters import add_adapters

            await add_adapters(self.engine, self.settings, adapters)

    async def _load_encoder(self, model_dir: Path, address: str) -> tuple[EngineLoadInfo, ModelServer]:
        """Embedding/rerank models are served by the model-management's encoder service."""
        from berth_server.model_process.encoder_service import create_encoder_service

        self.encoder = await asyncio.to_thread(create_encoder_service, self.config, model_dir, self.settings)
        start = getattr(self.encoder, "start", None)
        info = await start() if start is not None else None
        if not isinstance(info, EngineLoadInfo):
            info = EngineLoadInfo(engine="encoder", device="cpu", dtype="float32",
                                  max_model_len=self.config.context_length or 512, max_batch_size=1)
        return info, ModelServer(self.settings, address, encoder=self.encoder)

    async def _shutdown_engine(self) -> None:
        for target in (self.engine, self.encoder, self.media):
            shutdown = getattr(target, "shutdown", None)
            if shutdown is None:
                continue
            try:
                await asyncio.wait_for(shutdown(), ENGINE_SHUTDOWN_S)
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("engine shutdown did not complete cleanly: %s", one_line_reason(exc))


def weights_facts(model_dir: Path, config: ModelLaunchConfig) -> dict[str, Any]:
    """What the weights say about themselves, for the model's description (architecture, size, parameters)."""
    formats = {".gguf": "gguf", ".safetensors": "safetensors", ".bin": "pytorch"}
    files = [model_dir] if model_dir.is_file() else list(model_dir.glob("*"))
    weights_format = next((formats[f.suffix] for f in files if f.suffix in formats), None)
    return {"architecture": checkpoint.architecture(model_dir), "parameter_count": checkpoint.parameter_count(model_dir),
            "size_bytes": checkpoint.weights_size(model_dir), "weights_format": weights_format,
            "quantization": config.quantization}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read settings once, run the model process; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m berth_server.model_process")
    parser.add_argument("--config-json", required=True, help="ModelLaunchConfig as JSON")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # no runtime dir to report to: the launcher sees the exit code
        logging.basicConfig()
        log.error("bad settings: %s", exc)
        return EXIT_BAD_ARGUMENTS
    arm_for_parent(settings.die_with_parent_pid)  # started by a Ray actor: die with it
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s [model %(process)d] %(name)s: %(message)s")
    try:
        config = msgspec.json.decode(args.config_json, type=ModelLaunchConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.error("bad --config-json: %s", exc)
        return EXIT_BAD_ARGUMENTS
    process = ModelProcess(config, settings)
    try:
        return asyncio.run(process.run())
    finally:
        process.status.close()
