"""engines/select.py with fake engine classes: auto's order, its reasons, and the hand-over when an engine crashes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from berth_server.engines import facts, select
from berth_server.engines.base import EngineCrashedAtStart, EngineLoadInfo
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

BIG = ModelLaunchConfig(uid="m", source="x", model_name="big")


class _Refuses:
    """An engine class that explains why it cannot serve a spec."""

    @classmethod
    def cannot_serve(cls, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        return "needs a GPU"


class _Starts:
    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings):
        self.model_dir = model_dir

    async def start(self) -> EngineLoadInfo:
        return EngineLoadInfo(engine="transformers", device="cpu", dtype="float32", max_model_len=64,
                              max_batch_size=1)


class _CrashesAtStart(_Starts):
    shut_down = False

    async def start(self) -> EngineLoadInfo:
        raise EngineCrashedAtStart("vLLM could not load model 'big': its process VllmWorker-0 was killed by SIGILL")

    async def shutdown(self) -> None:
        type(self).shut_down = True


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Callable[[type, type], None]:
    """Install fake classes as the vllm and transformers engines (no package needed for either)."""
    def install(vllm: type, transformers: type) -> None:
        module = type(sys)("fake_engines_for_select")
        module.Vllm, module.Transformers = vllm, transformers  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        fakes = (replace(facts.VLLM, package="sys", engine_class=(module.__name__, "Vllm")),
                 replace(facts.TRANSFORMERS, package="sys", engine_class=(module.__name__, "Transformers")))
        monkeypatch.setattr(select, "ENGINES", fakes)
        monkeypatch.setattr(select, "BY_NAME", {fake.name: fake for fake in fakes})
        _CrashesAtStart.shut_down = False

    return install


def test_auto_falls_back_and_explicit_choice_explains(engines: Callable[[type, type], None],
                                                      caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    engines(_Refuses, _Starts)
    with caplog.at_level("INFO"):
        engine, _ = asyncio.run(select.start_engine(BIG, tmp_path, Settings()))
    assert isinstance(engine, _Starts)
    assert "engine transformers (auto; skipped vllm: needs a GPU)" in caplog.text
    with pytest.raises(select.EngineUnavailable, match="the vllm engine cannot serve model 'big': needs a GPU"):
        select.choose_engine(BIG, tmp_path, Settings(engine="vllm"))
    explicit = ModelLaunchConfig(uid="m", source="x", model_name="big", engine="transformers")
    assert select.choose_engine(explicit, tmp_path, Settings(engine="vllm")) == "transformers"


def test_missing_engine_package_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(select.BY_NAME, "vllm", replace(facts.VLLM, package="surely_not_an_installed_package_xyz"))
    config = ModelLaunchConfig(uid="m", source="x", model_name="tiny", engine="vllm")
    with pytest.raises(select.EngineUnavailable, match="surely_not_an_installed_package_xyz is not installed"):
        select.choose_engine(config, tmp_path, Settings())


def test_auto_serves_on_the_next_engine_when_one_crashes_at_start(
        engines: Callable[[type, type], None], caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    engines(_CrashesAtStart, _Starts)
    with caplog.at_level("WARNING"):
        engine, info = asyncio.run(select.start_engine(BIG, tmp_path, Settings()))
    assert isinstance(engine, _Starts) and info.engine == "transformers"
    assert _CrashesAtStart.shut_down  # what the crashed engine held is released before the next loads
    assert "the vllm engine crashed at start (vLLM could not load model 'big': its process VllmWorker-0 " \
           "was killed by SIGILL); auto serves it on transformers instead" in caplog.text


def test_an_explicit_engine_that_crashes_at_start_fails_the_launch(engines: Callable[[type, type], None],
                                                                    tmp_path: Path) -> None:
    engines(_CrashesAtStart, _Starts)
    config = ModelLaunchConfig(uid="m", source="x", model_name="big", engine="vllm")
    with pytest.raises(EngineCrashedAtStart, match="killed by SIGILL"):
        asyncio.run(select.start_engine(config, tmp_path, Settings()))
