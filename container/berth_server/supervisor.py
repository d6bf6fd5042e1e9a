"""Model-process supervision: spawn one process per replica of each uid, track its status, restart it a bounded
number of times.

A model has `replica` replicas (replicas.py), each its own process; the model's status is their
aggregate (ready while any replica is). A model process reports its progress over a PUSH socket (ModelStatus messages); the supervisor
keeps the latest status per uid, wakes anyone waiting for readiness, and notices exits. A replica
that dies after it was ready is restarted (the others keep serving) up to settings.max_model_restarts times; one that fails
while loading is not (the same weights would fail again) and stays `failed` with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from berth_server.errors import BerthError, Conflict, NotFound, from_failure
from berth_server.launch_config import ModelLaunchConfig, ModelStatus, ReplicaInfo
from berth_server.model_table import TableWriter, table_path
from berth_server.process_tree import die_with_parent
from berth_server.replicas import model_status, plan_gpus, replica_configs, replica_environment, visible_gpus
from berth_server.settings import Settings

log = logging.getLogger("berth.supervisor")

_status_decoder = msgspec.msgpack.Decoder(ModelStatus)
# How long a model process gets to exit after SIGTERM before it is killed.
_STOP_GRACE_S = 10.0
_RESTART_BACKOFF_S = (1.0, 3.0, 10.0)


def status_socket_address(settings: Settings) -> str:
    """Where model processes PUSH their ModelStatus messages."""
    return f"ipc://{settings.runtime_dir}/status.sock"


@dataclass
class ModelHandle:
    """One replica of a launched model: its config, its current process and what it last reported."""

    config: ModelLaunchConfig
    process: Any = None  # an asyncio subprocess, or a RayReplica (ray_placement.py) under BERTH_RAY_ADDRESS
    status: ModelStatus | None = None
    restarts: int = 0
    stopping: bool = False
    launched_at: float = field(default_factory=time.time)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_change: Callable[[], None] | None = None  # publishes the model table

    @property
    def state(self) -> str:
        return self.status.state if self.status else "starting"

    @property
    def index(self) -> int:
        return self.config.replica_index

    def info(self) -> ReplicaInfo:
        """This replica as GET /v1/models/{uid} and the frontend's routing see it."""
        status = self.status
        description = status.description if status else None
        pid = description.pid if description else (self.process.pid if self.process else None)
        return ReplicaInfo(index=self.index, state=status.state if status else "starting", pid=pid,
                           address=status.address if status else None, reason=status.reason if status else None,
                           node=getattr(self.process, "node", "local"),  # a RayReplica knows its node and key
                           server_key=getattr(self.process, "server_key", None))

    def set_status(self, status: ModelStatus) -> None:
        """Record a status and wake waiters (they re-check the state)."""
        self.status = status
        self.changed.set()
        self.changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change()


class Supervisor:
    """Owns every model process; the launcher's control handlers call into it."""

    def __init__(self, settings: Settings, context: zmq.asyncio.Context,
                 model_command: tuple[str, ...] = (sys.executable, "-m", "berth_server.model_process")):
        self.settings = settings
        self._context = context
        self._model_command = model_command  # tests substitute a fake model process
        self._models: dict[str, list[ModelHandle]] = {}  # uid -> its replicas, by index
        self._tasks: set[asyncio.Task[None]] = set()
        self._status_socket: zmq.asyncio.Socket | None = None
        runtime_dir = settings.runtime_dir
        self._table = TableWriter(table_path(runtime_dir)) if runtime_dir is not None else None
        self._ray: Any = None  # a RayPlacer when BERTH_RAY_ADDRESS is set (only then is ray imported)

    async def start(self) -> None:
        """Bind the status socket and start reading it."""
        self._status_socket = self._context.socket(zmq.PULL)
        self._status_socket.bind(status_socket_address(self.settings))
        if self.settings.ray_address:
            from berth_server.ray_placement import RayPlacer

            self._ray = RayPlacer(self.settings)
            await self._ray.start()
        self._publish()
        self._spawn_task(self._read_statuses())

    def _publish(self) -> None:
        """Write the model table for the frontend workers (before any control reply that changed it)."""
        if self._table is not None:
            self._table.write(self.statuses())

    def statuses(self) -> dict[str, ModelStatus]:
        """The latest status of every launched model (its replicas' aggregate, listing each), by uid."""
        return {uid: model_status(uid, [(h.info(), h.status) for h in handles]) for uid, handles in self._models.items()}

    def configs(self) -> dict[str, ModelLaunchConfig]:
        """The launch config of every launched model (replica 0's: the launch's), by uid."""
        return {uid: handles[0].config for uid, handles in self._models.items()}

    def replica_configs(self, uid: str) -> list[ModelLaunchConfig]:
        """The config of each replica of `uid` (its GPUs among them)."""
        return [h.config for h in self._models.get(uid, [])]

    async def launch(self, config: ModelLaunchConfig, wait_ready: bool) -> None:
        """Start `config.replica` model processes for `config`; with wait_ready, return once it serves (or raise why not)."""
        existing = self.statuses().get(config.uid)
        if existing is not None and existing.state not in ("failed", "stopped"):
            raise Conflict(f"model uid {config.uid!r} is already running; terminate it or choose another uid")
        # On Ray, each node's GPUs are Ray's to hand out (actor_options); here, this machine's.
        gpus = [] if self._ray is not None else visible_gpus(self.settings.device, self.settings.cuda_visible_devices)
        plan = plan_gpus(config.replica, config.n_gpu, self.settings.sm_num_gpus, gpus)
        handles = [ModelHandle(config=c, on_change=self._publish) for c in replica_configs(config, plan)]
        self._models[config.uid] = handles
        for handle in handles:
            await self._spawn_process(handle)
        if wait_ready:
            await self.wait_ready(config.uid, self.settings.model_load_timeout_s)

    async def wait_ready(self, uid: str, timeout_s: float) -> ModelStatus:
        """Wait until every replica of `uid` has loaded or failed: the status once any is ready, else the typed
        failure a replica reported; or a timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            handles = self._models.get(uid)
            if handles is None:
                raise NotFound(f"model uid {uid!r} not found")
            settled = all(h.state in ("ready", "failed", "stopped") for h in handles)
            ready = next((h for h in handles if h.state == "ready" and h.status is not None), None)
            if settled and ready is not None:
                return self.statuses()[uid]
            if settled:
                status = handles[0].status
                reason = status.reason if status and status.reason else "model process exited"
                error_type = status.error_type if status and status.error_type else "generation"
                raise from_failure(error_type, f"model {uid!r} failed to load: {reason}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BerthError(f"model {uid!r} did not become ready within {timeout_s:.0f} s")
            waits = [asyncio.ensure_future(h.changed.wait()) for h in handles]
            await asyncio.wait(waits, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()

    async def terminate(self, uid: str) -> None:
        """Stop every replica of `uid` (SIGTERM, then SIGKILL) and forget it; its memory is freed."""
        handles = self._models.get(uid)
        if handles is None:
            raise NotFound(f"model uid {uid!r} not found")
        for handle in handles:
            handle.stopping = True
            handle.set_status(ModelStatus(uid=uid, state="stopping", replica=handle.index))
        await asyncio.gather(*(self._stop_process(h) for h in handles))
        if self._models.get(uid) is handles:
            self._models.pop(uid, None)
        self._publish()

    async def shutdown(self) -> None:
        """Stop every model process, then the background tasks."""
        handles = [h for replicas in self._models.values() for h in replicas]
        for handle in handles:
            handle.stopping = True
        await asyncio.gather(*(self._stop_process(h) for h in handles), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ray is not None:
            self._ray.shutdown()
        if self._status_socket is not None:
            self._status_socket.close(linger=0)

    # --- internals -------------------------------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn_process(self, handle: ModelHandle) -> None:
        config_json = msgspec.json.encode(handle.config).decode()
        handle.set_status(ModelStatus(uid=handle.config.uid, state="starting", replica=handle.index))
        if self._ray is not None:
            handle.process = self._ray.place(handle.config, self._on_status)
            log.info("model %s: replica %d: placing it on the Ray cluster", handle.config.uid, handle.index)
            self._spawn_task(self._watch(handle, handle.process))
            return
        # A new session so a Ctrl-C in the terminal reaches the launcher only; it stops children in order.
        handle.process = await asyncio.create_subprocess_exec(
            *self._model_command, "--config-json", config_json,
            env=self.settings.child_environment(**replica_environment(handle.config.gpu_ids)),
            start_new_session=True, preexec_fn=die_with_parent(),
        )
        log.info("model %s: replica %d: process %d started (source %s)", handle.config.uid, handle.index,
                 handle.process.pid, handle.config.source)
        self._spawn_task(self._watch(handle, handle.process))

    async def _watch(self, handle: ModelHandle, process: asyncio.subprocess.Process) -> None:
        """Notice when a model process exits and decide: done, failed, or restart."""
        code = await process.wait()
        if handle.process is not process:
            return  # an older incarnation
        uid, index = handle.config.uid, handle.index
        if handle.stopping:
            handle.set_status(ModelStatus(uid=uid, state="stopped", replica=index))
            return
        was_ready = handle.state == "ready"
        if not was_ready:
            reason = handle.status.reason if handle.status and handle.status.reason else f"exit code {code}"
            error_type = handle.status.error_type if handle.status else None
            log.error("model %s failed to load: %s", uid, reason)
            handle.set_status(ModelStatus(uid=uid, state="failed", reason=reason, error_type=error_type, replica=index))
            return
        if handle.restarts >= self.settings.max_model_restarts:
            log.error("model %s crashed (exit code %s); restart limit %d reached", uid, code,
                      self.settings.max_model_restarts)
            handle.set_status(ModelStatus(uid=uid, state="failed", replica=index,
                                          reason=f"crashed with exit code {code}; restarted {handle.restarts} times"))
            return
        delay = _RESTART_BACKOFF_S[min(handle.restarts, len(_RESTART_BACKOFF_S) - 1)]
        handle.restarts += 1
        log.warning("model %s crashed (exit code %s); restart %d/%d in %.0f s", uid, code, handle.restarts,
                    self.settings.max_model_restarts, delay)
        handle.set_status(ModelStatus(uid=uid, state="starting", replica=index,
                                      reason=f"restarting after exit code {code}"))
        await asyncio.sleep(delay)
        if not handle.stopping:
            await self._spawn_process(handle)

    async def _stop_process(self, handle: ModelHandle) -> None:
        process = handle.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=_STOP_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("model %s did not stop within %.0f s; killing it", handle.config.uid, _STOP_GRACE_S)
            kill_all = getattr(process, "kill_all", None)  # a remote replica: its pid is not ours to signal
            with contextlib.suppress(ProcessLookupError):
                kill_all() if kill_all is not None else os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _read_statuses(self) -> None:
        assert self._status_socket is not None
        while True:
            frame = await self._status_socket.recv()
            try:
                status = _status_decoder.decode(frame)
            except msgspec.DecodeError:
                log.warning("ignoring a malformed status message")
                continue
            self._on_status(status)

    def _on_status(self, status: ModelStatus) -> None:
        """Record what a replica's model process reported (over the status socket, or relayed by Ray)."""
        replicas = self._models.get(status.uid) or []
        handle = replicas[status.replica] if 0 <= status.replica < len(replicas) else None
        if handle is None or handle.stopping:
            return
        if status.state != handle.state:
            log.info("model %s: replica %d: %s%s", status.uid, status.replica, status.state,
                     f" ({status.reason})" if status.reason else "")
        handle.set_status(status)
