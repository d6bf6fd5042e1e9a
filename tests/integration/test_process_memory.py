"""resident_bytes: a process tree's resident memory from /proc, None where unknown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from berth_server.process_memory import resident_bytes

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def _vmrss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_counts_the_process_and_its_children() -> None:
    # An idle parent whose idle child is a second interpreter: both have stable, several-MB footprints.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(200):
            kids = _children(parent.pid)
            if kids and _vmrss(kids[0]) > 4 * 2**20:
                break
            subprocess.run([sys.executable, "-c", "pass"], check=True)  # lets time pass without sleeping
        (child,) = _children(parent.pid)
        total = resident_bytes(parent.pid)
        assert total is not None
        # Parent alone would be _vmrss(parent); the child's memory must be in the sum too.
        assert total >= _vmrss(parent.pid) + _vmrss(child) * 0.9
        assert total <= (_vmrss(parent.pid) + _vmrss(child)) * 1.1
    finally:
        for pid in _children(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_unknown_process_is_none(tmp_path: Path) -> None:
    assert resident_bytes(None) is None
    assert resident_bytes(2**22 + 12345) is None  # past pid_max's default: no such process
    assert resident_bytes(os.getpid(), proc=tmp_path) is None  # no /proc at all
