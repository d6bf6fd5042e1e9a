"""The model process as a real process (load failure, ready + SIGTERM), and engine selection."""

from __future__ import annotations

import asyncio
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
from berth_server.engines import select
from berth_server.engines.base import EngineCrashedAtStart, EngineLoadInfo
from berth_server.models.launch import ModelLaunchConfig, ModelStatus
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


class _Refuses:
    """An engine class that explains why it cannot serve a spec."""

    @classmethod
    def cannot_serve(cls, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        return "needs a GPU"


class _Serves:
    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings):
        self.model_dir = model_dir


@pytest.fixture
def fake_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("fake_engines_for_select")
    module.Refuses, module.Serves = _Refuses, _Serves  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(select, "ENGINES", {"vllm": (module.__name__, "Refuses"),
                                            "transformers": (module.__name__, "Serves")})
    monkeypatch.setattr(select, "REQUIRED_PACKAGE", {})


def test_auto_falls_back_and_explicit_choice_explains(fake_engines: None, caplog: pytest.LogCaptureFixture,
                                                      tmp_path: Path) -> None:
    config = ModelLaunchConfig(uid="m", source="x", model_name="big")
    with caplog.at_level("INFO"):
        engine = select.create_engine(config, tmp_path, Settings())
    assert isinstance(engine, _Serves)
    assert "engine transformers (auto; skipped vllm: needs a GPU)" in caplog.text
    with pytest.raises(select.EngineUnavailable, match="the vllm engine cannot serve model 'big': needs a GPU"):
        select.create_engine(config, tmp_path, Settings(engine="vllm"))
    explicit = ModelLaunchConfig(uid="m", source="x", model_name="big", engine="transformers")
    assert select.choose_engine(explicit, tmp_path, Settings(engine="vllm")) == "transformers"


def test_missing_engine_package_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(select.REQUIRED_PACKAGE, "vllm", "surely_not_an_installed_package_xyz")
    config = ModelLaunchConfig(uid="m", source="x", model_name="tiny", engine="vllm")
    with pytest.raises(select.EngineUnavailable, match="surely_not_an_installed_package_xyz is not installed"):
        select.choose_engine(config, tmp_path, Settings())


class _CrashesAtStart(_Serves):
    shut_down = False

    async def start(self) -> EngineLoadInfo:
        raise EngineCrashedAtStart("vLLM could not load model 'big': its process VllmWorker-0 was killed by SIGILL")

    async def shutdown(self) -> None:
        type(self).shut_down = True


class _Starts(_Serves):
    async def start(self) -> EngineLoadInfo:
        return EngineLoadInfo(engine="transformers", device="cpu", dtype="float32", max_model_len=64,
                              max_batch_size=1)


@pytest.fixture
def crashing_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("crashing_engines_for_select")
    module.Crashes, module.Starts = _CrashesAtStart, _Starts  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(select, "ENGINES", {"vllm": (module.__name__, "Crashes"),
                                            "transformers": (module.__name__, "Starts")})
    monkeypatch.setattr(select, "REQUIRED_PACKAGE", {})
    _CrashesAtStart.shut_down = False


def test_auto_serves_on_the_next_engine_when_one_crashes_at_start(
        crashing_engines: None, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    config = ModelLaunchConfig(uid="m", source="x", model_name="big")
    with caplog.at_level("WARNING"):
        engine, info = asyncio.run(select.start_engine(config, tmp_path, Settings()))
    assert isinstance(engine, _Starts) and info.engine == "transformers"
    assert _CrashesAtStart.shut_down  # what the crashed engine held is released before the next loads
    assert "the vllm engine crashed at start (vLLM could not load model 'big': its process VllmWorker-0 " \
           "was killed by SIGILL); auto serves it on transformers instead" in caplog.text


def test_an_explicit_engine_that_crashes_at_start_fails_the_launch(crashing_engines: None, tmp_path: Path) -> None:
    config = ModelLaunchConfig(uid="m", source="x", model_name="big", engine="vllm")
    with pytest.raises(EngineCrashedAtStart, match="killed by SIGILL"):
        asyncio.run(select.start_engine(config, tmp_path, Settings()))
