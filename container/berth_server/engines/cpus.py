"""The CPU cores this process may run on (its affinity: a container's cpuset, `taskset`), for engine threads."""

from __future__ import annotations

import os


def usable_cpus() -> list[int]:
    """Ids of the cores this process may use, ascending (every core where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_list(cpus: list[int]) -> str:
    """Cores as a Linux CPU list ("0-3,6"), the form VLLM_CPU_OMP_THREADS_BIND and taskset read."""
    ranges: list[str] = []
    start = previous = None
    for cpu in sorted(cpus):
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            ranges.append(f"{start}-{previous}" if previous != start else str(start))
        start = previous = cpu
    if start is not None:
        ranges.append(f"{start}-{previous}" if previous != start else str(start))
    return ",".join(ranges)
