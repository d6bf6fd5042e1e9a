"""Replicas on one machine (issue 22): BERTH_REPLICAS=2 on the tiny model (transformers engine), one server.

Requests spread over both replicas; a replica killed mid-stream ends its stream with an error event within
2 s while the other keeps serving and /ping stays 200; the dead one comes back; a model launched with the
Xinference client's replica=2 is terminated with no process left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from xinference_client import RESTfulClient

from .conftest import RunningServer, launch_serve
from .test_xinference_client import _gone as gone
from .test_xinference_client import llm_registration


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = launch_serve(tiny_model, tmp_path_factory.mktemp("replicas"), engine="transformers",
                           env={"BERTH_MODEL_UID": "tiny", "BERTH_REPLICAS": "2"})
    wait_all_ready(running)  # /ping answers 200 as soon as the first replica is ready
    yield running
    running.stop()


def replicas(server: RunningServer, uid: str = "tiny") -> list[dict[str, Any]]:
    described = httpx.get(server.url(f"/v1/models/{uid}"), timeout=10).json()
    assert described["replica"] == 2
    return described["replicas"]


def wait_all_ready(server: RunningServer, uid: str = "tiny", timeout_s: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = replicas(server, uid)
        if all(r["state"] == "ready" for r in listed):
            return listed
        time.sleep(0.2)
    raise AssertionError(f"replicas of {uid} not ready: {replicas(server, uid)}\n{server.logs()[-3000:]}")


def finished(server: RunningServer) -> dict[str, float]:
    text = httpx.get(server.url("/metrics"), timeout=30).text
    found = re.findall(r'^berth_model_finished_requests\{model="tiny",replica="(\d+)"\} (\S+)$', text, re.MULTILINE)
    return {index: float(value) for index, value in found}


def test_two_replicas_each_their_own_process_and_requests_spread(server: RunningServer) -> None:
    listed = replicas(server)
    assert [(r["index"], r["node"], r["state"]) for r in listed] == [(0, "local", "ready"), (1, "local", "ready")]
    assert len({r["pid"] for r in listed}) == 2 and all(psutil.pid_exists(r["pid"]) for r in listed)
    before = finished(server)
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="none")
    for _ in range(4):
        reply = client.completions.create(model="tiny", prompt="Hi", max_tokens=4)
        assert reply.choices[0].text is not None
    after = finished(server)
    assert set(after) == {"0", "1"}
    assert all(after[i] - before.get(i, 0.0) >= 1 for i in ("0", "1")), (before, after)


def _stream(server: RunningServer, max_tokens: int, out: dict[str, Any]) -> None:
    body = {"model": "tiny", "prompt": "Go", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    events = []
    with httpx.stream("POST", server.url("/v1/completions"), json=body, timeout=60) as response:
        out["status"] = response.status_code
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                out["events"] = len(events)
            if out.get("enough") is not None and len(events) >= out["enough"]:
                out["hung_up"] = True
                break  # seen enough: hang up (the server aborts the rest)
    out["last"] = events[-1] if events else None
    out["ended_at"] = time.monotonic()


def test_a_killed_replica_fails_its_stream_only_and_comes_back(server: RunningServer) -> None:
    listed = replicas(server)
    first, second = {}, {}  # type: ignore[var-annotated]
    threads = [threading.Thread(target=_stream, args=(server, 1500, first)),
               threading.Thread(target=_stream, args=(server, 1500, second))]
    threads[0].start()
    deadline = time.monotonic() + 30
    while first.get("events", 0) < 2 and "last" not in first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.get("status") == 200, first
    threads[1].start()  # least in flight: the other replica
    while second.get("events", 0) < 2 and "last" not in second and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.get("events", 0) >= 2 and second.get("events", 0) >= 2
    text = httpx.get(server.url("/metrics"), timeout=30).text
    running = dict(re.findall(r'^berth_model_running_requests\{model="tiny",replica="(\d+)"\} (\S+)$', text,
                              re.MULTILINE))
    assert running == {"0": "1.0", "1": "1.0"}, running  # one stream on each replica
    # Kill replica 0: of the two streams, exactly the one it serves must fail.
    victim = listed[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    assert httpx.get(server.url("/ping"), timeout=5).status_code == 200  # the other replica keeps it ready
    for outcome in (first, second):  # the survivor: 20 more events after the kill, then hang up
        outcome["enough"] = outcome["events"] + 20
    for thread in threads:
        thread.join(timeout=60)
    outcomes = [first, second]
    failed = [o for o in outcomes if not o.get("hung_up")]
    served = [o for o in outcomes if o.get("hung_up")]
    assert len(failed) == 1 and len(served) == 1, outcomes
    assert json.loads(failed[0]["last"])["error_type"] == "incomplete_generation"
    assert failed[0]["ended_at"] - killed_at < 2.0
    assert httpx.get(server.url("/ping"), timeout=5).status_code == 200
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="none")
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices  # served meanwhile
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        back = replicas(server)[0]
        if back["state"] == "ready" and back["pid"] != victim["pid"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"replica 0 did not come back: {replicas(server)}")
    assert gone(victim["pid"], 1.0) and psutil.pid_exists(back["pid"])


def test_launch_replica_2_and_terminate_leaves_no_process(server: RunningServer, tiny_model: Path) -> None:
    client = RESTfulClient(server.base_url)
    client.register_model("LLM", json.dumps(llm_registration("rep-tiny", tiny_model)), persist=False)
    uid = client.launch_model("rep-tiny", model_engine="Transformers", model_uid="rep-1", replica=2)
    listed = replicas(server, uid)
    pids = [r["pid"] for r in listed]
    assert [r["state"] for r in listed] == ["ready", "ready"] and len(set(pids)) == 2
    assert client.get_model(uid).chat([{"role": "user", "content": "Hi"}], generate_config={"max_tokens": 2})
    client.terminate_model(uid)
    assert all(gone(pid) for pid in pids)
    assert uid not in client.list_models()
