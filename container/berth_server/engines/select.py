"""Pick and build the engine for a model: an explicit choice, or `auto` (llama.cpp for GGUF, else vLLM when it can serve).

What each engine is (its class, package, order under `auto`) is in engines/facts.py. Engine classes are imported lazily so `import berth_server` works without torch or vllm. An engine
class may expose `cannot_serve(config, model_dir, settings) -> str | None`, saying why it cannot
serve a spec instead of failing late; `auto` uses it to fall back, an explicit choice fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from berth_server.engines.base import Engine, EngineCrashedAtStart, EngineLoadInfo
from berth_server.engines.facts import BY_NAME, ENGINES, engine_name
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)

# How long an engine that crashed at start gets to release what it holds before the next one loads.
CRASHED_SHUTDOWN_S = 10.0


class EngineUnavailable(InvalidRequest):
    """The chosen engine cannot serve this model; the message says why."""


def engine_class(name: str) -> type[Engine]:
    """Import the engine class called `name`."""
    module_name, class_name = BY_NAME[name].engine_class
    module = importlib.import_module(module_name)
    cls: type[Engine] = getattr(module, class_name)
    return cls


def why_not(name: str, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
    """Why engine `name` cannot serve this model, or None when it can."""
    package = BY_NAME[name].package  # a missing package is a reason, not an import error
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed"
    try:
        cls = engine_class(name)
    except ImportError as exc:
        return f"cannot import the {name} engine: {exc}"
    check = getattr(cls, "cannot_serve", None)
    return check(config, model_dir, settings) if check is not None else None


def candidate_engines(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> list[str]:
    """The engines to try, in order: the explicit choice alone, or under `auto` every engine that says it can.

    Logs why each skipped engine cannot serve; EngineUnavailable when none can.
    """
    choice = engine_name(config.engine if config.engine != "auto" else settings.engine)
    if choice != "auto":
        reason = why_not(choice, config, model_dir, settings)
        if reason:
            raise EngineUnavailable(f"the {choice} engine cannot serve model '{config.model_name}': {reason}")
        log.info("model %s: engine %s (explicitly chosen)", config.uid, choice)
        return [choice]
    reasons: list[str] = []
    able: list[str] = []
    for name in (facts.name for facts in ENGINES):  # in `auto`'s order
        reason = why_not(name, config, model_dir, settings)
        if reason is None:
            able.append(name)
        else:
            reasons.append(f"{name}: {reason}")
    if not able:
        raise EngineUnavailable(f"no engine can serve model '{config.model_name}': {'; '.join(reasons)}")
    skipped = f"; skipped {'; '.join(reasons)}" if reasons else ""
    log.info("model %s: engine %s (auto%s)", config.uid, able[0], skipped)
    return able


def choose_engine(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str:
    """The engine name to use first, logging which one and why; EngineUnavailable when none fits."""
    return candidate_engines(config, model_dir, settings)[0]


def _build(name: str, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> Engine:
    cls: Any = engine_class(name)  # concrete engines take (model_dir, config, settings)
    engine: Engine = cls(model_dir, config, settings)
    return engine


async def start_engine(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> tuple[Engine, EngineLoadInfo]:
    """Build and start the engine; under `auto`, an engine that crashes at start hands over to the next one."""
    names = await asyncio.to_thread(candidate_engines, config, model_dir, settings)
    for position, name in enumerate(names):
        engine = await asyncio.to_thread(_build, name, config, model_dir, settings)
        try:
            return engine, await engine.start()
        except EngineCrashedAtStart as exc:
            with contextlib.suppress(Exception):  # what is left of a crashed engine may not stop cleanly
                await asyncio.wait_for(engine.shutdown(), CRASHED_SHUTDOWN_S)
            if position + 1 == len(names):
                raise
            log.warning("model %s: the %s engine crashed at start (%s); auto serves it on %s instead",
                        config.uid, name, exc.message, names[position + 1])
    raise EngineUnavailable(f"no engine can serve model '{config.model_name}'")  # names is never empty
