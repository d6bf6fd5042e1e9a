"""The model process as a real process (load failure, ready + SIGTERM), and engine selection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq
from berth_server import ipc
from berth_server.canonical import Delta, GenerateRequest, SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.launch_config import ModelStatus
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(240)
_status = msgspec.msgpack.Decoder(ModelStatus)


def start(tmp_path: Path, **config: object) -> tuple[subprocess.Popen[bytes], zmq.Socket]:  # type: ignore[type-arg]
    """Bind the launcher's status PULL socket in tmp_path and spawn the model process."""
    pull: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
    pull.bind(f"ipc://{tmp_path}/status.sock")
    launch = {"uid": "m1", "model_name": "tiny", **config}
    env = Settings(runtime_dir=tmp_path, home=tmp_path / "home", engine="transformers").child_environment()
    process = subprocess.Popen([sys.executable, "-m", "berth_server.model_process", "--config-json",
                                json.dumps(launch)], env=env)
    return process, pull


def statuses_until(pull: zmq.Socket, states: set[str], timeout_s: float = 150) -> list[ModelStatus]:  # type: ignore[type-arg]
    seen: list[ModelStatus] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pull.poll(int(1000 * (deadline - time.monotonic())) + 1):
            seen.append(_status.decode(pull.recv()))
            if seen[-1].state in states:
                return seen
    raise AssertionError(f"no status in {states} within {timeout_s} s; saw {[s.state for s in seen]}")


def test_load_failure_reports_the_reason_and_exits_3_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    process, pull = start(tmp_path, source=str(tmp_path / "missing"))
    try:
        seen = statuses_until(pull, {"failed"}, timeout_s=20)
        assert seen[0].state == "starting"
        assert seen[-1].reason == f"model weights not found at '{tmp_path / 'missing'}': not a directory"
        assert seen[-1].error_type == "validation"
        assert process.wait(timeout=20) == 3
        assert time.monotonic() - started < 20
    finally:
        process.kill()
        pull.close(linger=0)


def test_serves_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    model_dir = build(RECIPES["tiny"], tmp_path / "tiny")
    process, pull = start(tmp_path, source=str(model_dir))
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    try:
        ready = statuses_until(pull, {"ready", "failed"})[-1]
        assert ready.state == "ready", ready.reason
        assert ready.description is not None and ready.description.engine == "transformers"
        assert ready.description.pid == process.pid
        dealer.connect(ipc.model_socket_address(tmp_path, "m1"))
        request = GenerateRequest(request_id="r", model="m1", prompt="Hello",
                                  sampling=SamplingParams(max_new_tokens=3, greedy=True))
        dealer.send(ipc.encode(ipc.Generate(request)))
        events: list[object] = []
        while not (events and isinstance(events[-1], Delta) and events[-1].finish_reason):
            assert dealer.poll(30_000), f"no reply; got {events}"
            events.extend(ipc.decode_event_batch(dealer.recv()).events)
        assert events[-1].completion_tokens <= 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert statuses_until(pull, {"stopped"}, timeout_s=5)[-1].state == "stopped"
    finally:
        process.kill()
        dealer.close(linger=0)
        pull.close(linger=0)
