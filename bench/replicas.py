"""Replicas (issue 22): 16 streaming chats on SmolLM2 against 1 local replica, 2 local replicas, and 2 replicas
placed through a Ray cluster (two `ray start` nodes on this machine), at the same total threads.

Each run is its own `serve` (default model: the tiny demo model, unmeasured) that launches the measured
model through POST /v1/models with `replica`, `num_threads` = total threads / replicas, then waits for every
replica. Ratios: Ray 2 / local 2 (routing cost, goal >= 0.95) and local 2 / local 1 (recorded).
Appends a section to bench/RESULTS.md.
Usage: python -m bench.replicas [--threads 2] [--requests 32] [--max-tokens 64] [--only local-1 local-2 ray-2]
       python -m bench.replicas --smoke   (the tiny model, a few short requests, nothing written)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import peers
from bench.run_all import HEADER, _append, _fmt, _load, _ratio, _row, _with_peer, build_model, machine

RUNS = {"local-1": (1, False), "local-2": (2, False), "ray-2": (2, True)}  # name: (replicas, through Ray)
UID = "measured"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_cluster_auth() -> None:
    """Ray 2.59+ turns token auth on for a cluster as soon as ~/.ray/auth_token exists, and a process that
    imported ray before reads its mode once: a throwaway cluster on 127.0.0.1 says RAY_AUTH_MODE=disabled
    in this process's environment (the nodes, `serve` and its replicas inherit it), so nothing depends on
    that file."""
    os.environ["RAY_AUTH_MODE"] = "disabled"


def ray_node(tmp: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    """`ray start --block` in its own session (its temp dir under tmp, a small object store); stop_group ends it.

    The head stops without Ray's SIGTERM drain (up to 30 s of waiting for a node nothing will use again);
    other nodes keep it, so a node leaving a running cluster leaves the way Ray makes it leave."""
    ray = str(Path(sys.executable).with_name("ray"))
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - the node's output, kept for failures
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    if "--head" in args:
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", "--temp-dir", str(tmp / name),
                             "--object-store-memory", str(80 << 20), *args], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (a blocking `ray start` stops its node), SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class RayCluster:
    """A head and a second node on this machine, stopped (by process group) on exit."""

    def __init__(self, cpus: int) -> None:
        pin_cluster_auth()
        self.tmp = Path(tempfile.mkdtemp(prefix="berth-bench-ray-", dir="/tmp"))
        self.port = free_port()
        self.nodes = [ray_node(self.tmp, "head", ["--head", "--port", str(self.port), "--num-cpus", str(cpus),
                                                   "--include-dashboard", "false"])]
        time.sleep(5)
        self.nodes.append(ray_node(self.tmp, "second", ["--address", f"127.0.0.1:{self.port}",
                                                         "--num-cpus", str(cpus)]))
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for node in reversed(self.nodes):
            stop_group(node)


def _launch(peer: peers.Peer, model: Path, replicas: int, threads: int, timeout_s: float) -> None:
    body = {"model_name": "smollm2-instruct", "model_path": str(model), "model_engine": "transformers",
            "model_uid": UID, "replica": replicas, "num_threads": max(1, threads // replicas),
            "n_cpu": 0.5, "wait_ready": False}
    response = httpx.post(f"{peer.base_url}/v1/models", json=body, timeout=60)
    response.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = httpx.get(f"{peer.base_url}/v1/models/{UID}", timeout=10).json()
        states = [r["state"] for r in described.get("replicas", [])]
        if states and all(s == "ready" for s in states):
            return
        if "failed" in states:
            raise RuntimeError(f"a replica failed: {described}")
        time.sleep(0.5)
    raise TimeoutError(f"replicas not ready in {timeout_s:.0f} s")


def run(name: str, model: Path, tiny: Path, args: argparse.Namespace) -> dict[str, Any]:
    replicas, through_ray = RUNS[name]
    cluster = RayCluster(cpus=max(2, args.threads)) if through_ray else None
    env = {"BERTH_RAY_ADDRESS": cluster.address} if cluster else {}

    def body(peer: peers.Peer, out: dict[str, Any]) -> None:
        _launch(peer, model, replicas, args.threads, args.ready_timeout)
        peer.model = UID
        _load(peer, 2, 2, 8, args.request_timeout)  # warm-up, unmeasured
        out.update(_load(peer, args.concurrency, args.requests, args.max_tokens, args.request_timeout).to_dict())

    try:
        return _with_peer({}, lambda: peers.start_berth(tiny, free_port(), "transformers", args.ready_timeout,
                                                         env), body)
    finally:
        if cluster is not None:
            cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="total threads, split over replicas")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 4 requests of 8 tokens, nothing written")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.max_tokens, args.no_write = 2, 4, 8, True
    tiny = build_model("tiny")
    model = tiny if args.smoke else build_model("smollm2")
    results = {name: run(name, model, tiny, args) for name in args.only}
    lines = [f"\n## Replicas: 1 vs 2 local vs 2 through Ray ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
             (f"`python -m bench.replicas {shlex.join(argv or sys.argv[1:])}`; {args.concurrency} concurrent streaming "
             f"chats x {args.requests}, {args.max_tokens} new tokens, {args.threads} threads in total; "
             f"machine: {json.dumps(machine())}"), "", HEADER]
    lines += [_row(name, results.get(name)) for name in args.only]
    tok = {name: (results.get(name) or {}).get("output_tok_s") for name in args.only}
    lines += ["", f"- ray-2 / local-2: {_fmt(_ratio(tok.get('ray-2'), tok.get('local-2')))} (goal >= 0.95)",
              f"- local-2 / local-1: {_fmt(_ratio(tok.get('local-2'), tok.get('local-1')))} (recorded)"]
    print("\n".join(lines))
    if not args.no_write:
        _append(lines)
    failed = [name for name in args.only if "output_tok_s" not in (results.get(name) or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
