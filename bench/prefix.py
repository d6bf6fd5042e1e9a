"""Prefix reuse: TTFT of 16 chats sharing a ~1,000-token system prompt against 16 whose prompts differ.

Each server in turn gets one warm request with the shared prompt, then 16 concurrent streaming chats
that share it (each with its own question), then 16 whose system prompts differ from their first
token (nothing to reuse). The TTFT p50 ratio shared / distinct is the prefix cache's effect; Berth's
/metrics prefix-cache counters are read after each load. Appends a section to bench/RESULTS.md.

Usage: python -m bench.prefix [--only SERVER ...] [--model smollm2|tiny] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import functools
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from bench import peers
from bench.loadgen import LoadConfig, _one, summarize
from bench.run_all import _append, _fmt, _goal, _ratio, _sigterm, _warm, _with_peer, build_model, machine

SERVERS = ("berth-transformers", "berth-vllm", "vllm-server")
STREAMS = 16
# About 1,000 SmolLM2 tokens of plain prose (the tokenizer takes ~1.3 tokens per word here).
SYSTEM = " ".join(["The harbour office keeps a ledger of every ship, its cargo, its crew and the weather it met."]
                  * 45)
GOALS = {"berth-transformers": 0.3}  # TTFT p50 shared / distinct, at most


def _start(name: str, model: Path, port: int, args: argparse.Namespace) -> peers.Peer:
    if name == "vllm-server":
        return peers.start_vllm_server(model, port, args.ready_timeout)
    engine = name.removeprefix("berth-")
    return peers.start_berth(model, port, engine, args.ready_timeout, {"DTYPE": args.dtype} if args.dtype else None)


def _configs(peer: peers.Peer, shared: bool, max_tokens: int, timeout_s: float) -> list[LoadConfig]:
    """One request each: the shared prompt with its own question, or a prompt whose first token differs."""
    base = LoadConfig(url=peer.base_url, model=peer.model, max_tokens=max_tokens, timeout_s=timeout_s)
    out = []
    for i in range(STREAMS):
        system = SYSTEM if shared else f"Ledger {i * 7919 % 1000} of the harbour. {SYSTEM}"
        out.append(dataclasses.replace(base, prompt=f"{system}\n\nQuestion {i}: which ship came in last?"))
    return out


async def _burst(configs: list[LoadConfig]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(configs) + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(configs[0].timeout_s, connect=10.0)) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(*(_one(client, c) for c in configs))
        return summarize(configs[0], list(results), loop.time() - start).to_dict()


def _prefix_counters(peer: peers.Peer) -> tuple[float, float] | None:
    """Berth's berth_model_prefix_cache_{queries,hits} for the model, or None (vLLM's server, or not counted)."""
    try:
        text = httpx.get(f"{peer.base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    # Summed over the model's replicas (each series carries model and replica labels).
    sums = [sum(float(v) for v in re.findall(rf'^berth_model_prefix_cache_{kind}\{{[^}}]*\}} (\S+)$', text, re.MULTILINE))
            for kind in ("queries", "hits")]
    return (sums[0], sums[1]) if sums[0] else None


def run(model: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Start each server in turn, warm it (once with the shared prompt), run both bursts, stop it."""
    for index, name in enumerate(args.only or SERVERS):
        def body(peer: peers.Peer, out: dict[str, Any]) -> None:
            _warm(peer, args)
            asyncio.run(_burst(_configs(peer, True, args.max_tokens, args.request_timeout)[:1]))
            before = _prefix_counters(peer)
            out["shared"] = asyncio.run(_burst(_configs(peer, True, args.max_tokens, args.request_timeout)))
            after = _prefix_counters(peer)
            out["distinct"] = asyncio.run(_burst(_configs(peer, False, args.max_tokens, args.request_timeout)))
            if before and after and after[0] > before[0]:
                out["hit_rate_shared"] = (after[1] - before[1]) / (after[0] - before[0])

        _with_peer(results.setdefault(name, {}), functools.partial(_start, name, model, args.port + index, args), body)


def render(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [(f"### Prefix reuse: {STREAMS} concurrent chats, a ~1,000-token shared prompt vs distinct prompts, "
              f"{args.max_tokens} new tokens"), "",
             "| server | TTFT p50 shared | TTFT p50 distinct | shared / distinct | prefix-cache hit rate (shared) |",
             "|---|---|---|---|---|"]
    for name in args.only or SERVERS:
        res = results.get(name, {})
        if "failed" in res:
            lines.append(f"| {name} | FAILED: {res['failed'].splitlines()[0][:200]} | | | |")
            continue
        shared, distinct = (res.get(k, {}).get("ttft_p50_s") for k in ("shared", "distinct"))
        ratio = _ratio(shared, distinct)
        goal = f" — {_goal(ratio, '<=', GOALS[name])}" if name in GOALS else ""
        rate = res.get("hit_rate_shared")
        lines.append(f"| {name} | {_fmt(shared, ' s')} | {_fmt(distinct, ' s')} | {_fmt(ratio, 'x')}{goal} | "
                     f"{'—' if rate is None else f'{rate:.0%}'} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=SERVERS, help="server to run (repeatable)")
    p.add_argument("--model", default="smollm2", help="bench model: smollm2 (real weights) or a demo recipe (tiny)")
    p.add_argument("--dtype", default="", help="DTYPE for Berth (e.g. bfloat16, as vLLM's CPU build computes)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--port", type=int, default=18440)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = dt.datetime.now(dt.timezone.utc)
    command = "python -m bench.prefix " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = [f"## {started:%Y-%m-%d %H:%M} UTC — prefix reuse ({args.model})", "",
              f"Command: `{command.strip()}` (from the repo root)", "", "Machine:", "```"]
    header += [f"{k}: {v}" for k, v in machine().items()] + ["```", ""]
    results: dict[str, Any] = {}
    run(build_model(args.model), args, results)
    lines = header + render(results, args) + [f"_loadavg at the end: {Path('/proc/loadavg').read_text().strip()}_", ""]
    if not args.no_write:
        _append(lines)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
