"""Shared test servers kept for the whole session, and room made for new ones when memory runs short.

pytest tears a parametrized session fixture down whenever the next test wants another parameter: with
whole files handed to each pytest-xdist worker, that restarted the shared vLLM server (30-50 s) at
nearly every file. A ServerPool keeps each engine's server until the session ends instead. Kept
servers cost memory (a vLLM server on a CPU holds ~3 GB, its 1 GiB KV cache included), so before any
server starts, `make_room` stops this worker's least recently used kept servers, vLLM first and never
one the running test has asked for, until the machine has room for the new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# MemAvailable a new server needs before it starts (GiB): vLLM preallocates its KV cache (at least
# 1 GiB on a CPU) beside a worker of ~2 GB; the other engines load small test models.
ROOM_GIB = {"vllm": 5.0}
DEFAULT_ROOM_GIB = 1.5

_pools: list[ServerPool] = []  # this worker's pools
_current_test = [""]  # the node id of the test being set up or run (conftest's hook sets it)


def note_running_test(nodeid: str) -> None:
    """Note which test runs now: servers it asks a pool for are never stopped to make room."""
    _current_test[0] = nodeid


class ServerPool:
    """Servers by engine, each started on first use and kept until `stop_all` (or `make_room`)."""

    def __init__(self, launch: Callable[[str], Any]) -> None:
        self._launch = launch
        self._started: dict[str, Any] = {}
        self._used: dict[str, tuple[str, float]] = {}  # engine -> (last test that asked, when)
        self._failed: dict[str, RuntimeError] = {}  # a failed start is not tried again by the next test
        _pools.append(self)

    def __call__(self, engine: str) -> Any:
        if engine in self._failed:
            raise self._failed[engine]
        self._used[engine] = (_current_test[0], time.monotonic())
        if engine not in self._started:
            try:
                self._started[engine] = self._launch(engine)
            except RuntimeError as exc:  # ServerDidNotStart
                self._failed[engine] = exc
                raise
        return self._started[engine]

    def idle(self) -> list[tuple[bool, float, str]]:
        """(not vLLM, last used, engine) of the kept servers the running test has not asked for."""
        return [(engine != "vllm", self._used[engine][1], engine) for engine in self._started
                if self._used[engine][0] != _current_test[0]]

    def stop(self, engine: str) -> None:
        self._started.pop(engine).stop()

    def stop_all(self) -> None:
        for server in self._started.values():
            server.stop()
        self._started.clear()


def make_room(engine: str) -> None:
    """Stop this worker's idle kept servers (vLLM first, least recently used first) until a new `engine`
    server fits in the memory available, or none is left to stop."""
    needed = ROOM_GIB.get(engine, DEFAULT_ROOM_GIB)
    while (available := _available_gib()) is not None and available < needed:
        candidates = [(key, pool) for pool in _pools for key in pool.idle()]
        if not candidates:
            return
        (_, _, victim), pool = min(candidates, key=lambda c: c[0])
        pool.stop(victim)


def _available_gib() -> float | None:
    """MemAvailable from /proc/meminfo in GiB (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        return None
    return None
