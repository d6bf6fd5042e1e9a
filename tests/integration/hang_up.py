"""Hang up on a generation and wait for the model process to abort it, telling a lost abort from a lost race.

A client that hangs up mid-generation must get its generation aborted. On a small model a request
can also run to its end before the hang-up reaches the server: vLLM writes the tiny model's 1500
tokens in 1-3 s, and this machine's VM now and then pauses a process for that long (measured: a
plain `time.sleep(0.05)` loop woke 5 s late while vLLM ran). Then nothing is left to abort, so the
attempt says nothing either way and is made again; a hang-up that is neither aborted nor finished fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx

ATTEMPTS = 3
WAIT_S = 30.0


def model_counters(server: Any, uid: str | None = None) -> tuple[float, float]:
    """(aborted, finished) requests of the model process, read from /metrics (0 while it has none)."""
    text = httpx.get(server.url("/metrics"), timeout=30).text
    label = re.escape(uid) if uid else '[^"]+'

    def gauge(name: str) -> float:  # summed over the model's replicas
        return sum(float(value) for value in
                   re.findall(rf'^{name}\{{model="{label}",replica="\d+"\}} (\S+)$', text, re.MULTILINE))

    return gauge("berth_model_aborted_requests"), gauge("berth_model_finished_requests")


def assert_hang_up_aborts(server: Any, hang_up: Callable[[], None], uid: str | None = None) -> None:
    """Call `hang_up` (start a long generation, then drop the connection) until one attempt is aborted."""
    for _ in range(ATTEMPTS):
        aborted_before, finished_before = model_counters(server, uid)
        hang_up()
        deadline = time.monotonic() + WAIT_S
        while True:
            aborted, finished = model_counters(server, uid)
            if aborted > aborted_before:
                assert aborted == aborted_before + 1
                return
            if finished > finished_before:
                break  # it ran to its end before the hang-up arrived: try again
            assert time.monotonic() < deadline, "the model process never saw the hang-up:\n" + _tail(server)
            time.sleep(0.1)
    raise AssertionError(f"each of {ATTEMPTS} generations ended before its client's hang-up reached the server")


def _tail(server: Any) -> str:
    lines = [line for line in server.logs().splitlines() if '"GET /metrics' not in line]
    return "\n".join(lines[-60:])
