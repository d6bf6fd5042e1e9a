"""Replicas on a real two-node Ray cluster on this machine (issue 22).

A head and a second node (`ray start --block`, each its own temp dir, custom resource and a small object
store); `serve` joins it with BERTH_RAY_ADDRESS. replica=2 puts one replica on each node; requests reach
both over TCP with CURVE keys; stopping the second node places its replica again on the head; terminate
removes every actor.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from bench.replicas import pin_cluster_auth, ray_node, stop_group

from .conftest import RunningServer, free_port, launch_serve
from .test_xinference_client import llm_registration

ray = pytest.importorskip("ray")
ACTOR_CLASS = "ReplicaActor"


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen[bytes]
    second: subprocess.Popen[bytes]


def _alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    pin_cluster_auth()  # the nodes, this process and `serve` agree, whatever ~/.ray holds
    tmp = Path(f"/tmp/berth-ray-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    port = free_port()
    head = ray_node(tmp, "head", ["--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard",
                                    "false", "--resources", json.dumps({"berth_head": 1})])
    second = ray_node(tmp, "second", ["--address", f"127.0.0.1:{port}", "--num-cpus", "2",
                                        "--resources", json.dumps({"berth_second": 1})])
    running = Cluster(f"127.0.0.1:{port}", head, second)
    try:
        ray.init(address=running.address, logging_level="WARNING", log_to_driver=False)
        deadline = time.monotonic() + 90
        while len(_alive_nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_alive_nodes()) == 2, (tmp / "second.log").read_text(errors="replace")[-3000:]
        yield running
    finally:
        ray.shutdown()
        stop_group(second)
        stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@pytest.fixture(scope="module")
def server(cluster: Cluster, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = launch_serve(tiny_model, tmp_path_factory.mktemp("ray"), engine="transformers",
                           env={"BERTH_MODEL_UID": "tiny", "BERTH_RAY_ADDRESS": cluster.address})
    yield running
    running.stop()


def node_of(resource: str) -> str:
    return next(n["NodeID"] for n in _alive_nodes() if resource in n["Resources"])


def replicas(server: RunningServer, uid: str) -> list[dict[str, Any]]:
    return httpx.get(server.url(f"/v1/models/{uid}"), timeout=10).json()["replicas"]


def wait_replicas(server: RunningServer, uid: str, nodes: list[str], timeout_s: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = replicas(server, uid)
        if [r["state"] for r in listed] == ["ready"] * len(nodes) and sorted(r["node"] for r in listed) == sorted(nodes):
            return listed
        time.sleep(0.5)
    raise AssertionError(f"{uid}: {replicas(server, uid)}, expected on {nodes}\n{server.logs()[-4000:]}")


def alive_actors() -> list[Any]:
    table = ray._private.state.state.actor_table(None)  # GCS's actor table (the dashboard's state API reads it)
    return [a for a in table.values() if a["State"] == "ALIVE" and ACTOR_CLASS in a["ActorClassName"]]


def test_replicas_spread_serve_move_and_terminate(server: RunningServer, cluster: Cluster, tiny_model: Path) -> None:
    head, second = node_of("berth_head"), node_of("berth_second")
    client = RESTfulClient(server.base_url)
    client.register_model("LLM", json.dumps(llm_registration("ray-tiny", tiny_model)), persist=False)
    uid = client.launch_model("ray-tiny", model_engine="Transformers", model_uid="ray-1", replica=2, n_cpu=0.5)
    wait_replicas(server, uid, [head, second])  # one replica on each node, as Berth reports it
    actors = alive_actors()  # and as Ray's actor table has it
    assert len(actors) == 3  # the default model's replica and these two
    assert {head, second} <= {a["Address"]["NodeID"] for a in actors}

    api = openai.OpenAI(base_url=server.url("/v1"), api_key="none")
    for _ in range(4):
        assert api.chat.completions.create(model=uid, messages=[{"role": "user", "content": "Hi"}], max_tokens=3).choices
    text = httpx.get(server.url("/metrics"), timeout=30).text
    served = dict(re.findall(rf'^berth_model_finished_requests\{{model="{uid}",replica="(\d+)"\}} (\S+)$', text,
                             re.MULTILINE))
    assert {k: float(v) >= 1 for k, v in served.items()} == {"0": True, "1": True}, served

    stop_group(cluster.second)  # the second node leaves: its replica is placed again on the head
    moved = wait_replicas(server, uid, [head, head], timeout_s=180)
    assert api.chat.completions.create(model=uid, messages=[{"role": "user", "content": "Hi"}], max_tokens=3).choices
    assert httpx.get(server.url("/ping"), timeout=5).status_code == 200
    assert {r["index"] for r in moved} == {0, 1}

    client.terminate_model(uid)
    deadline = time.monotonic() + 30
    while len(alive_actors()) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(alive_actors()) == 1  # only the default model's replica is left
    server.stop()
    deadline = time.monotonic() + 30
    while alive_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive_actors() == []
