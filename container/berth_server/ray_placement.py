"""Replicas as Ray actors (issue 22): BERTH_RAY_ADDRESS makes the supervisor place each replica on a Ray cluster.

Imported only when BERTH_RAY_ADDRESS is set: without it nothing imports ray. Each replica is one
ReplicaActor (ray_actor.py) with the launch's resources (n_gpu, n_cpu, ray_resources), spread over the
nodes; the actor runs the model process on its node, which resolves the weights there and listens on
TCP as a CURVE server (model_process/remote.py). The supervisor treats a RayReplica like a local
process: it waits for it, stops it, and restarts it when it dies — a lost node included, which places
the replica again wherever the cluster has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from berth_server.curve_keys import ENV_CLIENT_PUBLIC, ENV_SERVER_SECRET, keypair, write_client_keys
from berth_server.launch_config import ModelLaunchConfig, ModelStatus
from berth_server.settings import Settings, inherited_environment

log = logging.getLogger("berth.ray")
_status_decoder = msgspec.msgpack.Decoder(ModelStatus)
NAMESPACE = "berth"
# What a replica's node gets of the launcher's environment: the settings and the weights' credentials.
FORWARDED_PREFIXES = ("BERTH_", "HF_", "HUGGING_FACE_", "AWS_", "SM_", "VLLM_", "TOKENIZERS_", "OMP_")
NODE_LOCAL = ("BERTH_RUNTIME_DIR", "PROMETHEUS_MULTIPROC_DIR", ENV_SERVER_SECRET, ENV_CLIENT_PUBLIC)
LOST = -1  # the exit code a replica gets when its actor or node is gone


def actor_options(config: ModelLaunchConfig, sm_num_gpus: int, cluster_gpus: float) -> dict[str, Any]:
    """Ray actor options for one replica: its GPUs (n_gpu, else SM_NUM_GPUS / replicas on a GPU cluster), CPUs
    (n_cpu, default 1), custom resources (ray_resources), spread over the nodes, never restarted by Ray
    (the supervisor restarts it, bounded, as it does local replicas)."""
    if config.n_gpu is not None:
        gpus: float = config.n_gpu
    else:
        gpus = max(1, sm_num_gpus // max(1, config.replica)) if cluster_gpus > 0 else 0
    return {"num_cpus": config.n_cpu if config.n_cpu is not None else 1.0, "num_gpus": gpus,
            "resources": dict(config.ray_resources), "scheduling_strategy": "SPREAD", "max_restarts": 0,
            "max_concurrency": 4}


def replica_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a replica's model process gets from the launcher (its node adds the rest)."""
    environ = inherited_environment() if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env.update(settings.to_env())
    for name in NODE_LOCAL:
        env.pop(name, None)
    return env


class RayReplica:
    """One replica placed on the cluster; process-like for the supervisor (pid, returncode, wait, send_signal)."""

    def __init__(self, actor: Any, server_key: str) -> None:
        self.actor = actor
        self.server_key = server_key
        self.pid: int | None = None
        self.node = "pending"
        self.returncode: int | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> int:
        await self._done.wait()
        return self.returncode if self.returncode is not None else LOST

    def send_signal(self, _signal: int) -> None:
        """Stop the model process (SIGTERM then SIGKILL on its node), then the actor."""
        asyncio.ensure_future(self._stop())

    async def _stop(self) -> None:
        with contextlib.suppress(Exception):
            code = await self.actor.stop.remote()
            self._finish(code if code is not None else 0)
        self.kill_all()

    def kill_all(self) -> None:
        """Kill the actor (its model process dies with it)."""
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)
        self._finish(LOST)

    def _finish(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        self._done.set()

    async def run(self, config_json: str, env: dict[str, str], on_status: Callable[[ModelStatus], None]) -> None:
        """Place and start the model process, then relay its statuses until it exits or the actor is lost."""
        try:
            where = await self.actor.start.remote(config_json, env)
            self.pid, self.node = where["pid"], where["node"]
            log.info("replica placed on node %s (%s), pid %s", self.node, where["host"], self.pid)
            while True:
                frame = await self.actor.next_status.remote()
                if frame is None:
                    self._finish(await self.actor.exit_code.remote() or 0)
                    break
                with contextlib.suppress(msgspec.DecodeError):
                    on_status(_status_decoder.decode(frame))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the actor or its node is gone (RayActorError and kin)
            log.warning("replica on node %s lost: %s", self.node, str(exc).splitlines()[0] if str(exc) else exc)
            self.kill_all()
        self._finish(LOST)


class RayPlacer:
    """The launcher's link to the Ray cluster: joins it, places replicas, leaves it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client_public = ""
        self._actor_class: Any = None
        self._cluster_gpus = 0.0

    async def start(self) -> None:
        """Join the cluster (BERTH_RAY_ADDRESS) and make the frontend's CURVE key pair."""
        import ray

        from berth_server.ray_actor import ReplicaActor

        address = self.settings.ray_address
        await asyncio.to_thread(ray.init, address=address, namespace=NAMESPACE, log_to_driver=False,
                                logging_level=logging.WARNING, ignore_reinit_error=True)
        self._cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        self._actor_class = ray.remote(ReplicaActor)
        assert self.settings.runtime_dir is not None
        self.client_public, _ = write_client_keys(self.settings.runtime_dir)
        log.info("joined the Ray cluster at %s (%d nodes)", address, len([n for n in ray.nodes() if n["Alive"]]))

    def place(self, config: ModelLaunchConfig, on_status: Callable[[ModelStatus], None]) -> RayReplica:
        """Create the replica's actor and start placing it (in the background: it waits for room)."""
        options = actor_options(config, self.settings.sm_num_gpus, self._cluster_gpus)
        server_public, server_secret = keypair()
        actor = self._actor_class.options(**options).remote()
        replica = RayReplica(actor, server_public)
        env = replica_environment(self.settings)
        env.update({ENV_SERVER_SECRET: server_secret, ENV_CLIENT_PUBLIC: self.client_public})
        replica._task = asyncio.ensure_future(replica.run(msgspec.json.encode(config).decode(), env, on_status))
        return replica

    def shutdown(self) -> None:
        """Leave the cluster."""
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
