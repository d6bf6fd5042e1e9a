"""Resident memory of a model process and the processes it started (vLLM's engine core), from Linux's /proc."""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def _rss_and_children(pid: int, proc: Path) -> tuple[int, list[int]]:
    """VmRSS in bytes and the child pids of every thread of one process (OSError when it is gone)."""
    rss = 0
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024  # the kernel reports kB
            break
    children: list[int] = []
    for task in (proc / str(pid) / "task").iterdir():
        try:
            children.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue  # a thread that just exited
    return rss, children


def resident_bytes(pid: int | None, proc: Path = _PROC) -> int | None:
    """Resident memory of `pid` plus its descendants; None where unknown (no /proc, or the process is gone)."""
    if pid is None:
        return None
    total, pending, seen = 0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            rss, children = _rss_and_children(current, proc)
        except (OSError, ValueError):
            if current == pid:
                return None
            continue  # a child that exited while we looked
        total += rss
        pending.extend(children)
    return total
