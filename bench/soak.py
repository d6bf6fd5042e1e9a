"""Soak: 64 concurrent streams against the tiny model for a while, then again with BERTH_WORKERS=2.

Reports errors, and each process's RSS and open file descriptors at the start and the end with the
slope of a least-squares line through samples taken every SAMPLE_S seconds. Goal: 0 errors and no
growth beyond noise. Run: `make soak` (SOAK_SECONDS per phase, 300 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import loadgen, peers
from bench.run_all import build_model, machine

SAMPLE_S = 10.0


def roles(root: psutil.Process) -> dict[int, str]:
    """pid -> role for the launcher and everything under it."""
    named = {root.pid: "launcher"}
    for child in root.children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            parent = child.ppid()
        except psutil.Error:
            continue
        if "berth_server.model_process" in cmdline:
            named[child.pid] = "model process"
        elif "gunicorn" in cmdline or "berth_server.http" in cmdline:
            named[child.pid] = "gunicorn master" if parent == root.pid else f"gunicorn worker {child.pid}"
        else:
            named[child.pid] = f"other ({child.name()})"
    return named


def sample(root: psutil.Process) -> dict[str, tuple[float, int]]:
    """role -> (RSS MiB, open fds) right now."""
    out = {}
    for pid, role in roles(root).items():
        try:
            process = psutil.Process(pid)
            out[role] = (process.memory_info().rss / 2**20, process.num_fds())
        except psutil.Error:
            continue
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


async def drive(base_url: str, model: str, concurrency: int, seconds: float, root: psutil.Process,
                samples: list[tuple[float, dict[str, tuple[float, int]]]]) -> dict[str, Any]:
    """Keep `concurrency` streams going for `seconds`; sample the processes every SAMPLE_S."""
    cfg = loadgen.LoadConfig(url=base_url, model=model, concurrency=concurrency, max_tokens=32, stream=True,
                             timeout_s=120.0)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    ok = errors = 0
    messages: list[str] = []
    start = time.monotonic()
    deadline = start + seconds

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        async def worker() -> None:
            nonlocal ok, errors
            while time.monotonic() < deadline:
                result = await loadgen._one(client, cfg)
                if result.ok:
                    ok += 1
                else:
                    errors += 1
                    if len(messages) < 5:
                        messages.append(result.error or "?")

        async def sampler() -> None:
            while time.monotonic() < deadline:
                samples.append((time.monotonic() - start, sample(root)))
                await asyncio.sleep(SAMPLE_S)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    samples.append((time.monotonic() - start, sample(root)))
    return {"requests_ok": ok, "errors": errors, "error_samples": messages, "seconds": time.monotonic() - start}


def phase(model_dir: Path, workers: int, seconds: float, concurrency: int, port: int) -> dict[str, Any]:
    """One soak phase on a fresh server."""
    peer = peers.start_berth(model_dir, port, "transformers", extra_env={"BERTH_WORKERS": str(workers)})
    try:
        root = psutil.Process(peer.proc.pid)
        # Warm-up: every worker has its sockets and the model has run once before the first sample.
        asyncio.run(drive(peer.base_url, peer.model, concurrency, 10.0, root, []))
        samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
        result = asyncio.run(drive(peer.base_url, peer.model, concurrency, seconds, root, samples))
    finally:
        peer.stop()
    table = {}
    for role in samples[0][1]:
        rss = [(t, s[role][0]) for t, s in samples if role in s]
        fds = [(t, float(s[role][1])) for t, s in samples if role in s]
        table[role] = {"rss_start_mib": rss[0][1], "rss_end_mib": rss[-1][1], "rss_slope_mib_per_min": slope(rss),
                       "fds_start": int(fds[0][1]), "fds_end": int(fds[-1][1]), "fds_slope_per_min": slope(fds),
                       # The whole series, so a plateau can be told from steady growth.
                       "rss_series_mib": [round(v, 1) for _, v in rss]}
    return {"workers": workers, **result, "processes": table}


def render(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, str]) -> str:
    """Markdown for bench/RESULTS.md."""
    lines = [(f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — soak, {args.seconds:g} s per phase,"
             f" {args.concurrency} concurrent streams, tiny model, transformers engine"), "",
             (f"Command: `python -m bench.soak --seconds {args.seconds:g} --concurrency {args.concurrency} --workers"
             f" {' '.join(map(str, args.workers))}`"
             " (= `make soak`, from the repo root)"), "", "Machine:", "```",
             *(f"{k}: {v}" for k, v in info.items()), "```", ""]
    for result in results:
        lines += [f"BERTH_WORKERS={result['workers']}: {result['requests_ok']} streams ok, {result['errors']} "
                  f"errors in {result['seconds']:.0f} s" + (f" ({result['error_samples']})" if result["errors"]
                                                             else "."), "",
                  ("| process | RSS start → end (MiB) | RSS slope (MiB/min) | RSS at each fifth of the run (MiB) |"
                  " fds start → end | fds slope (/min) |"),
                  "| --- | --- | --- | --- | --- | --- |"]
        for role, row in sorted(result["processes"].items()):
            series = row["rss_series_mib"]
            fifths = " ".join(f"{series[round(i * (len(series) - 1) / 5)]:.0f}" for i in range(6))
            lines.append(f"| {role} | {row['rss_start_mib']:.0f} → {row['rss_end_mib']:.0f} | "
                         f"{row['rss_slope_mib_per_min']:+.2f} | {fifths} | {row['fds_start']} → {row['fds_end']} | "
                         f"{row['fds_slope_per_min']:+.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both phases; print the markdown and write the JSON under bench/out/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300.0, help="measured seconds per phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="BERTH_WORKERS of each phase")
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    info = machine()
    model_dir = build_model("tiny")
    results = [phase(model_dir, workers, args.seconds, args.concurrency, args.port + workers)
               for workers in args.workers]
    peers.OUT.mkdir(parents=True, exist_ok=True)
    (peers.OUT / "soak.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    info["loadavg (end)"] = Path("/proc/loadavg").read_text().strip()
    section = render(results, args, info)
    print(section)
    if not args.no_write:
        with open(peers.REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as results_file:
            results_file.write("\n" + section + "\n")
    return 1 if any(result["errors"] for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
