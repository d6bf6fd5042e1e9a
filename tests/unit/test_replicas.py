"""Replicas (issue 22): GPU arithmetic, per-replica configs, the model's aggregate status, routing, supervision."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from berth_server.client.replica_router import ReplicaRouter, preference_key
from berth_server.errors import InvalidRequest, NotReady
from berth_server.launch_config import ModelLaunchConfig, ModelStatus, ReplicaInfo
from berth_server.replicas import (
    check_replica_count,
    model_status,
    plan_gpus,
    ready_replicas,
    replica_configs,
    replica_environment,
    visible_gpus,
)

from tests.unit.test_launcher_supervisor import REPO, config, running_supervisor


@pytest.mark.parametrize(("replicas", "n_gpu", "sm_num_gpus", "gpus", "expected"), [
    (2, None, 8, [str(i) for i in range(8)], [["0", "1", "2", "3"], ["4", "5", "6", "7"]]),
    (3, None, 8, [str(i) for i in range(8)], [["0", "1"], ["2", "3"], ["4", "5"]]),  # 8 // 3 = 2 each
    (4, 1, 8, [str(i) for i in range(8)], [["0"], ["1"], ["2"], ["3"]]),  # n_gpu given wins
    (2, None, 1, ["0", "1"], [["0"], ["1"]]),  # SM_NUM_GPUS below replicas: one GPU each
    (2, None, 4, ["3", "5", "6", "7"], [["3", "5"], ["6", "7"]]),  # CUDA_VISIBLE_DEVICES ids, in order
    (2, None, 4, [], [[], []]),  # CPU: no GPUs to hand out
])
def test_plan_gpus(replicas: int, n_gpu: int | None, sm_num_gpus: int, gpus: list[str],
                   expected: list[list[str]]) -> None:
    assert plan_gpus(replicas, n_gpu, sm_num_gpus, gpus) == expected


def test_plan_gpus_refuses_more_than_there_are() -> None:
    with pytest.raises(InvalidRequest, match="needs 6 GPUs; 4 are visible"):
        plan_gpus(3, 2, 4, ["0", "1", "2", "3"])


def test_visible_gpus(tmp_path: Path) -> None:
    assert visible_gpus(listed="2,3") == ["2", "3"]
    assert visible_gpus(listed="-1") == []
    assert visible_gpus("cpu", listed="0") == []
    (tmp_path / "0000:01:00.0").mkdir()
    (tmp_path / "0000:02:00.0").mkdir()
    assert visible_gpus(proc_dir=tmp_path) == ["0", "1"]
    assert visible_gpus(proc_dir=tmp_path / "absent") == []


def test_replica_configs_and_environment() -> None:
    base = ModelLaunchConfig(uid="m", source="s", model_name="m", replica=2, tensor_parallel_size=8)
    first, second = replica_configs(base, [["0", "1"], ["2", "3"]])
    assert (first.replica_index, second.replica_index) == (0, 1)
    assert (first.gpu_ids, second.gpu_ids) == (["0", "1"], ["2", "3"])
    assert first.tensor_parallel_size == second.tensor_parallel_size == 2  # tensor parallel inside a replica
    assert replica_environment(second.gpu_ids) == {"CUDA_VISIBLE_DEVICES": "2,3", "SM_NUM_GPUS": "2"}
    assert replica_environment([]) == {}
    cpu = replica_configs(base, [[], []])
    assert [c.tensor_parallel_size for c in cpu] == [8, 8] and [c.gpu_ids for c in cpu] == [[], []]


@pytest.mark.parametrize("value", [0, 65, "2", 1.5, True, None])
def test_replica_count_refused(value: object) -> None:
    with pytest.raises(InvalidRequest, match="replica"):
        check_replica_count(value)


def test_model_status_is_ready_while_any_replica_is() -> None:
    loading = (ReplicaInfo(index=0, state="starting", pid=10), ModelStatus(uid="m", state="starting"))
    ready = (ReplicaInfo(index=1, state="ready", pid=11), ModelStatus(uid="m", state="ready", replica=1))
    failed = (ReplicaInfo(index=0, state="failed", reason="oom"), ModelStatus(uid="m", state="failed", reason="oom"))
    status = model_status("m", [loading, ready])
    assert status.state == "ready" and [r.index for r in status.replicas] == [0, 1]
    assert model_status("m", [loading, failed]).state == "starting"
    assert model_status("m", [failed, failed]).state == "failed"
    assert model_status("m", [failed]).reason == "oom"


def test_ready_replicas_of_a_status_without_replicas() -> None:
    assert ready_replicas({"state": "ready", "description": {"pid": 7}}) == [
        {"index": 0, "state": "ready", "node": "local", "pid": 7, "address": None}]
    assert ready_replicas({"state": "loading"}) == []
    listed = {"state": "ready", "replicas": [{"index": 0, "state": "starting"}, {"index": 1, "state": "ready"}]}
    assert [r["index"] for r in ready_replicas(listed)] == [1]


REPLICAS = [{"index": 0, "state": "ready"}, {"index": 1, "state": "ready"}, {"index": 2, "state": "loading"}]


def test_router_least_in_flight_then_turns() -> None:
    router = ReplicaRouter()
    loads = {0: 3, 1: 1}
    assert router.pick("m", REPLICAS, loads.__getitem__)["index"] == 1
    even = {0: 0, 1: 0}
    picks = [router.pick("m", REPLICAS, even.__getitem__)["index"] for _ in range(4)]
    assert sorted(picks) == [0, 0, 1, 1]  # ties take turns; the loading replica never gets one
    with pytest.raises(NotReady):
        router.pick("m", [{"index": 0, "state": "loading"}], even.__getitem__)


def test_router_prefers_the_replica_a_key_used_within_slack() -> None:
    router = ReplicaRouter(slack=2)
    loads = {0: 0, 1: 0}
    first = router.pick("m", REPLICAS, loads.__getitem__, prefer="adapter:a")["index"]
    loads[first] = 2  # busier by the slack: still preferred
    assert router.pick("m", REPLICAS, loads.__getitem__, prefer="adapter:a")["index"] == first
    loads[first] = 3  # busier by more than the slack: the least busy one, remembered from now on
    other = router.pick("m", REPLICAS, loads.__getitem__, prefer="adapter:a")["index"]
    assert other != first
    loads[first] = 0
    assert router.pick("m", REPLICAS, loads.__getitem__, prefer="adapter:a")["index"] == other
    router.forget("m")
    assert router._affinity == {}


def test_preference_key() -> None:
    assert preference_key(SimpleNamespace(adapter="sql", session_id=None)) == "adapter:sql"
    assert preference_key(SimpleNamespace(adapter="sql", session_id="s1")) == "session:s1"
    assert preference_key(SimpleNamespace(adapter=None)) is None


def test_supervisor_runs_replicas_restarts_one_and_terminates_all(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running_supervisor(tmp_path) as sup:
            await sup.launch(msgspec_replace(config("r"), replica=2), wait_ready=True)
            status = sup.statuses()["r"]
            assert status.state == "ready" and [r.state for r in status.replicas] == ["ready", "ready"]
            pids = [r.pid for r in status.replicas]
            assert None not in pids and len(set(pids)) == 2
            os.kill(pids[1], signal.SIGKILL)  # type: ignore[arg-type]
            for _ in range(100):
                await asyncio.sleep(0.05)
                if sup.statuses()["r"].replicas[1].state != "ready":
                    break
            assert sup.statuses()["r"].state == "ready"  # replica 0 keeps the model ready
            for _ in range(200):  # restarted after the 1 s backoff
                replica = sup.statuses()["r"].replicas[1]
                if replica.state == "ready" and replica.pid != pids[1]:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"replica 1 did not come back: {sup.statuses()['r'].replicas}")
            alive = [r.pid for r in sup.statuses()["r"].replicas]
            await sup.terminate("r")
            assert not [pid for pid in alive if pid is not None and psutil.pid_exists(pid)
                        and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    monkeypatch.chdir(REPO)
    asyncio.run(scenario())


def msgspec_replace(launch: ModelLaunchConfig, **changes: object) -> ModelLaunchConfig:
    import msgspec

    return msgspec.structs.replace(launch, **changes)
