"""engines/cpus.py: the cores a process may use, written as a Linux CPU list."""

from __future__ import annotations

import os

import pytest
from berth_server.engines.cpus import cpu_list, usable_cpus


@pytest.mark.parametrize(("cpus", "written"), [
    ([0], "0"), ([1], "1"), ([0, 1], "0-1"), ([3, 0, 1, 2], "0-3"), ([0, 2, 3, 6], "0,2-3,6"), ([], ""),
])
def test_cpu_list(cpus: list[int], written: str) -> None:
    assert cpu_list(cpus) == written


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_usable_cpus_follow_the_affinity() -> None:
    before = os.sched_getaffinity(0)
    try:
        one = min(before)
        os.sched_setaffinity(0, {one})
        assert usable_cpus() == [one]
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cpus() == sorted(before)
