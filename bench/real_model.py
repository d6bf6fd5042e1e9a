"""SmolLM2-135M-Instruct (real weights) on Berth's two engines and on its peers, side by side in one run.

Berth (vLLM) vs vLLM's own server; Berth (transformers) vs Xinference 4.1.0 and vs vLLM's own server.
Each server in turn gets 16 concurrent streaming chats at each length (default 64 and 512 new tokens),
so the cost growth with length shows. Appends a section to bench/RESULTS.md.
Usage: python -m bench.real_model [--requests 32] [--lengths 64 512] [--only SERVER ...] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import peers
from bench.run_all import (
    HEADER,
    _append,
    _fmt,
    _goal,
    _load,
    _ratio,
    _row,
    _sigterm,
    _warm,
    _with_peer,
    build_model,
    machine,
)

SERVERS = ("berth-transformers", "berth-vllm", "vllm-server", "xinference")
# Not in the default run: the transformers engine in vLLM's CPU dtype, for a like-for-like ratio.
EXTRA_SERVERS = ("berth-transformers-bf16",)
CONCURRENCY = 16
# (numerator, denominator, goal on the tok/s ratio): the comparisons the issue asks for.
# run_all's columns plus the mean output tokens per request (a server that ignores ignore_eos stops early).
TABLE_HEADER = (HEADER.splitlines()[0] + " tokens/request |\n" + HEADER.splitlines()[1] + "---|")
PAIRS = (("berth-vllm", "vllm-server", 0.97), ("berth-transformers", "xinference", 1.3),
         ("berth-transformers", "vllm-server", None), ("berth-transformers-bf16", "vllm-server", None),
         ("berth-transformers-bf16", "berth-transformers", None))


def _start(name: str, model: Path, port: int, args: argparse.Namespace) -> peers.Peer:
    if name == "berth-transformers":
        return peers.start_berth(model, port, "transformers", args.ready_timeout)
    if name == "berth-transformers-bf16":
        return peers.start_berth(model, port, "transformers", args.ready_timeout, {"DTYPE": "bfloat16"})
    if name == "berth-vllm":
        return peers.start_berth(model, port, "vllm", args.ready_timeout)
    if name == "vllm-server":
        return peers.start_vllm_server(model, port, args.ready_timeout)
    return peers.start_xinference(model, port, args.ready_timeout)


def _dtype(name: str, peer: peers.Peer) -> str:
    """The dtype the server computes in: Berth's /info, vLLM's start-up log; Xinference loads the checkpoint's."""
    try:
        if name.startswith("berth"):
            return str(httpx.get(f"{peer.base_url}/info", timeout=10).json().get("model_dtype"))
        if name == "vllm-server":
            found = re.search(r"dtype=torch\.(\w+)", peer.log_path.read_text(errors="replace"))
            return found.group(1) if found else "?"
    except (httpx.HTTPError, OSError, ValueError):
        return "?"
    return "float32 (the checkpoint's torch_dtype)"


def run(model: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Start each server in turn, warm it, run the loads at every length, stop it."""
    for index, name in enumerate(args.only or SERVERS):
        def body(peer: peers.Peer, out: dict[str, Any], name: str = name) -> None:
            out["dtype"] = _dtype(name, peer)
            _warm(peer, args)
            for length in args.lengths:
                out[f"t{length}"] = _load(peer, CONCURRENCY, args.requests, length, args.request_timeout).to_dict()

        started = time.perf_counter()
        port = args.port + index
        _with_peer(results.setdefault(name, {}), functools.partial(_start, name, model, port, args), body)
        results[name]["stage_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps({name: results[name]}, default=str)[:2000], flush=True)


def render(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown: one row per server and length, then the ratios and the growth from the shortest length."""
    title = (f"### SmolLM2-135M-Instruct, {CONCURRENCY} concurrent streaming chats, {args.requests} requests"
             " per length")
    lines = [title, "", TABLE_HEADER]
    for name in args.only or SERVERS:
        for length in args.lengths:
            res = results.get(name, {}).get(f"t{length}")
            row = _row(f"{name}, {length} new tokens", res or results.get(name))
            per_request = res["output_tokens"] / res["completed"] if res and res.get("completed") else None
            lines.append(row + (" — |" if per_request is None else f" {per_request:.0f} |"))
    lines.append("")
    lines.append("- dtypes: " + "; ".join(f"{n} {results.get(n, {}).get('dtype', '—')}" for n in args.only or SERVERS))
    for a, b, goal in PAIRS:
        if not {a, b} <= set(args.only or SERVERS):
            continue
        for length in args.lengths:
            ra, rb = results.get(a, {}).get(f"t{length}"), results.get(b, {}).get(f"t{length}")
            tok = _ratio(ra and ra["output_tok_s"], rb and rb["output_tok_s"])
            ttft = _ratio(ra and ra["ttft_p50_s"], rb and rb["ttft_p50_s"])
            verdict = f" — {_goal(tok, '>=', goal)}" if goal else ""
            lines.append(f"- {length} tokens: tok/s {a} / {b} {_fmt(tok, 'x')}{verdict}; TTFT p50 {_fmt(ttft, 'x')}")
    first, last = args.lengths[0], args.lengths[-1]
    for name in args.only or SERVERS:
        lo, hi = results.get(name, {}).get(f"t{first}"), results.get(name, {}).get(f"t{last}")
        growth = _ratio(hi and hi["latency_p50_s"], lo and lo["latency_p50_s"])
        keep = _ratio(hi and hi["output_tok_s"], lo and lo["output_tok_s"])
        lines.append(f"- {name}: latency p50 at {last} / at {first} tokens {_fmt(growth, 'x')}; "
                     f"tok/s kept {_fmt(keep, 'x')}")
    for name in args.only or SERVERS:
        if "failed" in results.get(name, {}):
            lines.append(f"- {name} FAILED: {results[name]['failed'].splitlines()[0][:300]}")
    lines += ["- seconds per server (start, warm-up, loads, stop): "
              + ", ".join(f"{n} {results.get(n, {}).get('stage_s', '—')}" for n in args.only or SERVERS), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Build SmolLM2 (float32) once, run every server, append the section to bench/RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=32, help="requests per length (16 at a time)")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 512], help="new tokens per request")
    p.add_argument("--only", action="append", choices=SERVERS + EXTRA_SERVERS,
                   help=f"server to run (repeatable); default {', '.join(SERVERS)}")
    p.add_argument("--port", type=int, default=18420, help="first of 4 consecutive ports")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = dt.datetime.now(dt.timezone.utc)
    command = "python -m bench.real_model " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    info = machine()
    model = build_model("smollm2")
    title = (f"## {started:%Y-%m-%d %H:%M} UTC — SmolLM2-135M-Instruct (real weights): Berth vs vLLM's server"
             " and Xinference")
    header = [title, "", f"Command: `{command.strip()}` (from the repo root)", "", "Machine:", "```"]
    header += [f"{k}: {v}" for k, v in info.items()] + ["```", ""]
    print("\n".join(header), flush=True)
    results: dict[str, Any] = {}
    interrupted = False
    try:
        run(model, args, results)
    except KeyboardInterrupt:
        interrupted = True
    lines = header + render(results, args)
    lines += [f"_loadavg at the end: {Path('/proc/loadavg').read_text().strip()}_"
              + (" — INTERRUPTED, figures above are partial" if interrupted else ""), ""]
    if not args.no_write:
        _append(lines)
    print("\n".join(lines), flush=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
