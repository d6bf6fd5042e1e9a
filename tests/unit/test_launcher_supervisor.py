"""The supervisor with fake model processes: readiness, typed load failures, bounded restarts, terminate."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from berth_server.errors import Conflict, InvalidRequest, NotFound
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings
from berth_server.supervisor import Supervisor

FAKE = (sys.executable, "-m", "tests.unit.fakes.model_process")
REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running_supervisor(runtime_dir: Path, **settings: Any) -> AsyncIterator[Supervisor]:
    """A started supervisor whose model processes are fakes; everything is stopped afterwards."""
    context = zmq.asyncio.Context()
    supervisor = Supervisor(Settings(runtime_dir=runtime_dir, model_load_timeout_s=30, **settings), context,
                            model_command=FAKE)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.shutdown()
        context.term()


def config(uid: str, behaviour: str = "ready") -> ModelLaunchConfig:
    return ModelLaunchConfig(uid=uid, source="/weights/" + uid, model_name=uid,
                             engine_args={"fake_behaviour": behaviour})


def test_launch_waits_until_ready_and_reports_description(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running_supervisor(tmp_path) as sup:
            await sup.launch(config("a"), wait_ready=True)
            status = sup.statuses()["a"]
            assert status.state == "ready"
            assert status.description is not None and status.description.engine == "fake"
            with pytest.raises(Conflict):
                await sup.launch(config("a"), wait_ready=False)
            await sup.terminate("a")
            assert "a" not in sup.statuses()
            with pytest.raises(NotFound):
                await sup.terminate("a")

    monkeypatch.chdir(REPO)
    asyncio.run(scenario())


def test_load_failure_is_typed_and_not_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running_supervisor(tmp_path) as sup:
            with pytest.raises(InvalidRequest, match="/weights/bad"):
                await sup.launch(config("bad", "fail"), wait_ready=True)
            assert sup.statuses()["bad"].state == "failed"
            # A failed uid may be launched again (e.g. after fixing the weights).
            await sup.launch(config("bad", "ready"), wait_ready=True)

    monkeypatch.chdir(REPO)
    asyncio.run(scenario())


def test_crash_after_ready_restarts_then_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running_supervisor(tmp_path, max_model_restarts=1) as sup:
            await sup.launch(config("c", "crash"), wait_ready=True)
            for _ in range(200):  # crash, one restart after 1 s, crash again, give up
                if sup.statuses()["c"].state == "failed":
                    break
                await asyncio.sleep(0.05)
            status = sup.statuses()["c"]
            assert status.state == "failed"
            assert "restarted 1 times" in (status.reason or "")

    monkeypatch.chdir(REPO)
    asyncio.run(scenario())


def test_every_change_is_in_the_model_table_before_the_call_returns(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from berth_server.model_table import TableReader, table_path

    reader = TableReader(table_path(tmp_path))

    async def scenario() -> None:
        async with running_supervisor(tmp_path) as sup:
            assert reader.models() == {}
            await sup.launch(config("a"), wait_ready=False)
            assert reader.models()["a"]["state"] in ("starting", "loading", "ready")
            await sup.wait_ready("a", 30)
            assert reader.models()["a"]["state"] == "ready" and reader.models()["a"]["description"]["pid"]
            await sup.launch(config("bad", "fail"), wait_ready=False)
            with pytest.raises(InvalidRequest):
                await sup.wait_ready("bad", 30)
            failed = reader.models()["bad"]
            assert failed["state"] == "failed" and failed["reason"]  # reported with its reason...
            await sup.terminate("bad")  # ...and removable
            await sup.terminate("a")
            assert reader.models() == {}

    monkeypatch.chdir(REPO)
    asyncio.run(scenario())
