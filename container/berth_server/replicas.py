"""Replicas of one model (issue 22): the per-replica launch configs, their GPUs, and the model's status as a whole.

Each replica is its own model process with its own engine. With GPUs each replica owns `n_gpu` of them
(the launch's n_gpu, else SM_NUM_GPUS / replicas) and runs tensor parallel inside them; on a CPU-only
machine replicas share the cores. The launcher reports a model as one ModelStatus whose `replicas` lists
every replica; the model is ready while any replica is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig, ModelStatus, ReplicaInfo

MAX_REPLICAS = 64
_LOADING = ("starting", "downloading", "loading")


def check_replica_count(value: object, param: str = "replica") -> int:
    """A replica count from a launch body or BERTH_REPLICAS; InvalidRequest unless 1..MAX_REPLICAS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise InvalidRequest(f"{param} must be an integer from 1 to {MAX_REPLICAS}, not {value!r}", param=param)
    return value


def visible_gpus(device: str = "auto", listed: str | None = None,
                 proc_dir: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """The GPU ids this launcher may hand out: `listed` (CUDA_VISIBLE_DEVICES) when set, else the driver's GPUs;
    none on CPU."""
    if device == "cpu":
        return []
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        return [str(i) for i in range(len(list(proc_dir.iterdir())))]
    except OSError:
        return []


def plan_gpus(replicas: int, n_gpu: int | None, sm_num_gpus: int, gpus: list[str]) -> list[list[str]]:
    """The GPUs of each replica: `n_gpu` each (default SM_NUM_GPUS // replicas, at least 1), disjoint, in order.

    No GPUs: every replica gets none (CPU). InvalidRequest when the replicas need more GPUs than there are.
    """
    if not gpus:
        return [[] for _ in range(replicas)]
    per = n_gpu if n_gpu is not None else max(1, min(sm_num_gpus, len(gpus)) // replicas)
    if per * replicas > len(gpus):
        raise InvalidRequest(f"replica={replicas} with n_gpu={per} needs {per * replicas} GPUs; "
                             f"{len(gpus)} are visible ({','.join(gpus)})", param="replica")
    return [gpus[i * per:(i + 1) * per] for i in range(replicas)]


def replica_configs(config: ModelLaunchConfig, plan: list[list[str]]) -> list[ModelLaunchConfig]:
    """One config per replica: its index, its GPUs, and tensor parallel over exactly those GPUs."""
    configs = []
    for index, gpu_ids in enumerate(plan):
        tensor_parallel = len(gpu_ids) if gpu_ids else config.tensor_parallel_size
        configs.append(msgspec.structs.replace(config, replica=len(plan), replica_index=index,
                                               gpu_ids=list(gpu_ids),
                                               tensor_parallel_size=tensor_parallel))
    return configs


def replica_environment(gpu_ids: list[str]) -> dict[str, str]:
    """What a replica's process gets on top of the launcher's environment: only its own GPUs."""
    if not gpu_ids:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "SM_NUM_GPUS": str(len(gpu_ids))}


def model_status(uid: str, replicas: list[tuple[ReplicaInfo, ModelStatus | None]]) -> ModelStatus:
    """The model's status from its replicas': ready while any replica is; loading while any loads; else the first's.

    The description (and progress, reason) come from the replica that gives the state, so /v1/models and
    /info keep working unchanged for a replicated model.
    """
    infos = [info for info, _ in replicas]
    pick = _representative(replicas)
    info, status = pick
    if status is None:
        return ModelStatus(uid=uid, state=info.state, reason=info.reason, replicas=infos)
    return msgspec.structs.replace(status, uid=uid, state=info.state, replicas=infos, replica=info.index,
                                   reason=status.reason or info.reason)


def _representative(replicas: list[tuple[ReplicaInfo, ModelStatus | None]]) -> tuple[ReplicaInfo, ModelStatus | None]:
    for states in (("ready",), _LOADING, ("stopping",), ("failed",)):
        for entry in replicas:
            if entry[0].state in states:
                return entry
    return replicas[0]


def ready_replicas(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ready replicas of a model status as the frontend reads it (a status without replicas is replica 0)."""
    listed = status.get("replicas")
    if isinstance(listed, list) and listed:
        return [r for r in listed if isinstance(r, dict) and r.get("state") == "ready"]
    if status.get("state") != "ready":
        return []
    description = status.get("description")
    pid = description.get("pid") if isinstance(description, dict) else None
    return [{"index": 0, "state": "ready", "node": "local", "pid": pid, "address": status.get("address")}]
