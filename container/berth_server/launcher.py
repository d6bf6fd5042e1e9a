"""The launcher (`serve`): read settings once, start the default model and gunicorn, supervise, drain on SIGTERM.

Order of events: bind the control and status sockets, spawn the default model process, start
gunicorn at once (so /ping answers 503 while the model loads), then wait. If the default model
fails to load, everything stops and the exit code is 3 with the reason logged. On SIGTERM or
SIGINT: gunicorn stops accepting and finishes in-flight requests within the grace period, then
the model processes stop, and the launcher exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from berth_server.control_server import ControlServer, Handler, supervisor_handlers
from berth_server.engines.engine_settings import check_engine_settings
from berth_server.engines.facts import BY_NAME, engine_name
from berth_server.errors import BerthError, InvalidRequest
from berth_server.ipc import control_socket_address
from berth_server.launch_config import ModelLaunchConfig
from berth_server.models.management import control_handlers as management_handlers
from berth_server.models.management import enrich_default_config
from berth_server.models.media_sources import media_kind
from berth_server.models.sources import single_file_for
from berth_server.process_tree import die_with_parent
from berth_server.settings import Settings, SettingsError
from berth_server.supervisor import Supervisor

log = logging.getLogger("berth.launcher")

EXIT_OK = 0
EXIT_BAD_SETTINGS = 2
EXIT_MODEL_FAILED = 3
EXIT_FRONTEND_FAILED = 4


class StartupError(Exception):
    """The server cannot start; the message says why."""


def default_model_config(settings: Settings) -> ModelLaunchConfig:
    """The launch config of the default model: HF_MODEL_ID, else SageMaker's /opt/ml/model."""
    source = settings.hf_model_id
    if source is None:
        model_dir = settings.sagemaker_model_dir
        if not model_dir.is_dir() or not any(model_dir.iterdir()):
            raise StartupError(f"no model to serve: HF_MODEL_ID is not set and {model_dir} is missing or empty")
        source = str(model_dir)
    gguf_file, quantization = settings.hf_model_gguf_file, settings.quantize
    if gguf_file is None:
        gguf_file, quantization = single_file_for(quantization, source)
    config = ModelLaunchConfig(
        uid=settings.default_model_uid, source=source, model_name=settings.hf_model_id or source,
        revision=settings.hf_model_revision, engine=settings.engine, max_input_tokens=settings.max_input_tokens,
        max_total_tokens=settings.max_total_tokens, dtype=settings.dtype, quantization=quantization, gguf_file=gguf_file,
        trust_remote_code=settings.trust_remote_code, tensor_parallel_size=settings.sm_num_gpus, is_default=True,
        tool_call_parser=settings.tool_call_parser, replica=settings.replicas,
    )
    kind = media_kind(source)
    if kind is not None:  # an audio or image model: no chat facts to add
        model_type, family, abilities = kind
        # BERTH_ENGINE names a token engine for LLMs; an audio or image model picks among its own engines.
        engine = settings.engine if model_type in getattr(BY_NAME.get(settings.engine), "model_types", ()) else "auto"
        return msgspec.structs.replace(config, model_type=model_type, model_family=family, abilities=list(abilities),
                                       engine=engine)
    return _with_catalog_facts(config, settings)


def _with_catalog_facts(config: ModelLaunchConfig, settings: Settings) -> ModelLaunchConfig:
    """Add what the built-in catalog knows about the default model (reasoning tags, stops), when it knows it."""
    return enrich_default_config(config, settings)


def gunicorn_command(settings: Settings) -> list[str]:
    """gunicorn with gevent workers serving the Flask app factory."""
    return [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "gevent",
        "--workers", str(settings.workers),
        "--worker-connections", str(max(1000, settings.max_concurrent_requests * 2)),
        "--bind", f"{settings.host}:{settings.port}",
        # FINDINGS: for gevent workers --timeout is a heartbeat; --graceful-timeout cuts long streams on stop.
        "--timeout", "60",
        "--graceful-timeout", str(int(settings.graceful_timeout_s)),
        # An idle keep-alive connection holds its greenlet until this expires, and a graceful stop waits
        # for it: 5 s keeps SIGTERM well inside SageMaker's 30 s, at the cost of an occasional reconnect.
        "--keep-alive", "5",
        "--no-control-socket",  # gunicorn 27 would write under ~/.gunicorn (a read-only home breaks it)
        "--log-level", settings.log_level.lower(),
        "--access-logfile", "-",
        "berth_server.http.wsgi:create_app()",
    ]


def control_handlers(settings: Settings, supervisor: Supervisor) -> dict[str, Handler]:
    """The launcher's methods plus model management's (registrations, Xinference launch)."""
    handlers = supervisor_handlers(supervisor)
    handlers.update(management_handlers(settings, supervisor))
    return handlers


# A gunicorn worker still booting when SIGTERM comes has no handler for it yet and serves on until the
# master's graceful timeout kills it: without a request to drain, a stop waits only this long.
NO_DRAIN_S = 0.0


class Launcher:
    """Runs one server: the supervisor, the control server and gunicorn."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._context = zmq.asyncio.Context()
        self.supervisor = Supervisor(settings, self._context)
        self._stop = asyncio.Event()
        self._gunicorn: asyncio.subprocess.Process | None = None
        self._drain_s = settings.graceful_timeout_s

    def request_stop(self) -> None:
        """Begin a graceful shutdown (signal handler)."""
        self._stop.set()

    async def run(self) -> int:
        """Start everything, wait for the default model, serve until stopped; return the exit code."""
        config = default_model_config(self.settings)
        await self.supervisor.start()
        control = ControlServer(control_socket_address(self.settings.runtime_dir),  # type: ignore[arg-type]
                                self._context, control_handlers(self.settings, self.supervisor))
        control_task = asyncio.ensure_future(control.serve())
        await self.supervisor.launch(config, wait_ready=False)
        self._gunicorn = await self._start_gunicorn()
        try:
            return await self._serve(config)
        finally:
            await self._shutdown()
            control_task.cancel()
            # term() blocks until every socket is closed: let the control server close its own first.
            with contextlib.suppress(asyncio.CancelledError):
                await control_task
            self._context.term()

    async def _serve(self, config: ModelLaunchConfig) -> int:
        assert self._gunicorn is not None
        frontend_exit = asyncio.ensure_future(self._gunicorn.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        ready = asyncio.ensure_future(self.supervisor.wait_ready(config.uid, self.settings.model_load_timeout_s))
        try:
            done, _ = await asyncio.wait({ready, frontend_exit, stop}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                try:
                    ready.result()
                except BerthError as exc:
                    log.error("default model cannot be served: %s", exc.message)
                    self._drain_s = NO_DRAIN_S  # nothing was ever served, so nothing is in flight to drain
                    return EXIT_MODEL_FAILED
                log.info("default model %s is ready; serving on %s:%d", config.uid, self.settings.host,
                         self.settings.port)
                watch = asyncio.ensure_future(self._watch_default(config.uid))
                done, _ = await asyncio.wait({frontend_exit, stop, watch}, return_when=asyncio.FIRST_COMPLETED)
                watch.cancel()
            if stop in done:
                return EXIT_OK
            if frontend_exit in done:
                log.error("the HTTP frontend exited unexpectedly (exit code %s)", frontend_exit.result())
                return EXIT_FRONTEND_FAILED
            log.error("the default model failed for good; stopping so the platform can replace this server")
            return EXIT_MODEL_FAILED
        finally:
            for task in (ready, stop):
                task.cancel()

    async def _watch_default(self, uid: str) -> None:
        """Return when the default model is permanently failed (restarts exhausted)."""
        while True:
            status = self.supervisor.statuses().get(uid)
            if status is None or status.state == "failed":
                return
            await asyncio.sleep(1.0)

    async def _start_gunicorn(self) -> asyncio.subprocess.Process:
        metrics_dir = Path(str(self.settings.runtime_dir)) / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = self.settings.child_environment(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        return await asyncio.create_subprocess_exec(*gunicorn_command(self.settings), env=env,
                                                    start_new_session=True, preexec_fn=die_with_parent())

    async def _shutdown(self) -> None:
        """gunicorn first (it drains in-flight requests, which still need the models), then the models."""
        process = self._gunicorn
        if process is not None and process.returncode is None:
            log.info("stopping: draining in-flight requests (up to %.0f s)", self._drain_s)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=self._drain_s + 3)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await self.supervisor.shutdown()
        log.info("stopped")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def with_engine_checked(settings: Settings) -> Settings:
    """Settings with BERTH_ENGINE in its canonical spelling; SettingsError when no engine goes by that name."""
    try:
        return settings.replace(engine=engine_name(settings.engine, "BERTH_ENGINE"))
    except InvalidRequest as exc:
        raise SettingsError(exc.message) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `serve`: returns the process exit code."""
    parser = argparse.ArgumentParser(prog="serve", description=__doc__)
    parser.parse_args([a for a in (argv or []) if a != "serve"])  # SageMaker runs `docker run IMAGE serve`
    try:
        settings = with_engine_checked(Settings.from_env())
        check_engine_settings()  # the engines' own settings fail here, not at the first launch
    except SettingsError as exc:
        print(f"serve: invalid setting: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    _configure_logging(settings.log_level)
    owns_runtime_dir = settings.runtime_dir is None  # a temp dir we made is ours to remove
    runtime_dir = settings.resolved_runtime_dir()
    runtime_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.replace(runtime_dir=runtime_dir)
    launcher = Launcher(settings)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, launcher.request_stop)
        return await launcher.run()

    try:
        return asyncio.run(run())
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_MODEL_FAILED
    finally:
        if owns_runtime_dir:
            shutil.rmtree(runtime_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
