"""LoRA benchmark: 16 streams over 4 adapters + the base model vs 16 base-only streams, on one server.

Serves SmolLM2-135M (float32) with four random peft adapters made like the tests' (tests/lora_reference.py),
then alternates the two loads (base-only, mixed, base-only, mixed, ...) so both see the same machine,
and appends the per-engine ratio (mixed tok/s / base tok/s) with the load average to bench/RESULTS.md.

    .venv/bin/python -m bench.lora --engine transformers [--rounds 2] [--requests 32]
    .venv/bin/python -m bench.lora --engine vllm --vllm-server   (Berth's ratio against vLLM's own server, same adapters)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from bench.loadgen import LoadConfig, run_load
from bench.peers import Peer, start_berth, start_vllm_server

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def _adapters() -> dict[str, Path]:
    from berth_server.models.wheel_weights import smollm2_dir

    from tests.lora_reference import make_adapters

    base = smollm2_dir(OUT / "models")
    target = OUT / "adapters"
    if not all((target / n / "adapter_config.json").is_file() for n in ("alpha", "bravo", "charlie", "delta")):
        make_adapters(base, target)
    return {n: target / n for n in ("alpha", "bravo", "charlie", "delta")}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loads(server: Peer, model: str, adapters: dict[str, Path], args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Alternate base-only and mixed loads on `server` (`model` is its base model's name): (base runs, mixed runs)."""
    plain = LoadConfig(url=server.base_url, model=model, concurrency=16, requests=args.requests,
                       max_tokens=args.max_tokens)
    mixed = LoadConfig(url=server.base_url, model=model, concurrency=16, requests=args.requests,
                       max_tokens=args.max_tokens, models=(model, *adapters))
    asyncio.run(run_load(LoadConfig(url=server.base_url, model="alpha", concurrency=4, requests=4, max_tokens=8)))
    base_runs, mixed_runs = [], []
    for _ in range(args.rounds):
        base_runs.append(asyncio.run(run_load(plain)))
        mixed_runs.append(asyncio.run(run_load(mixed)))
    return base_runs, mixed_runs


def _vllm_server_args(adapters: dict[str, Path]) -> tuple[str, ...]:
    """vLLM's own server with the adapters, the LoRA sizing Berth's vLLM engine gives it (4 slots, rank 16) and
    its dtype (float32 for this float32 checkpoint on a CPU, where vLLM's own default would be bfloat16)."""
    return ("--dtype", "float32", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--lora-modules",
            *(f"{name}={folder}" for name, folder in adapters.items()))


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and append it to RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--vllm-server", action="store_true",
                   help="with --engine vllm: the same loads on vLLM's own server with the same adapters, after Berth's")
    args = p.parse_args(argv)
    from berth_server.models.wheel_weights import smollm2_dir

    base = smollm2_dir(OUT / "models")
    adapters = _adapters()
    env = {"BERTH_MODEL_UID": "smol", "BERTH_MAX_LORAS": "4",
           "LORA_ADAPTERS": ",".join(f"{n}={d}" for n, d in adapters.items())}
    load_start = os.getloadavg()
    import sys

    # The interpreter running this script serves too (a worktree has no .venv of its own).
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    server: Peer = start_berth(base, _free_port(), args.engine, extra_env=env)
    try:
        base_runs, mixed_runs = _loads(server, "smol", adapters, args)
    finally:
        server.stop()
    peer_runs: tuple[list[Any], list[Any]] | None = None
    if args.vllm_server and args.engine == "vllm":
        peer = start_vllm_server(base, _free_port(), name="smol", extra=_vllm_server_args(adapters))
        try:
            peer_runs = _loads(peer, "smol", adapters, args)
        finally:
            peer.stop()
    load_end = os.getloadavg()
    errors = sum(r.errors for r in base_runs + mixed_runs + (peer_runs[0] + peer_runs[1] if peer_runs else []))
    base_tps = statistics.mean(r.output_tok_s for r in base_runs)
    mixed_tps = statistics.mean(r.output_tok_s for r in mixed_runs)
    ratio = mixed_tps / base_tps if base_tps else 0.0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    flag = " --vllm-server" if peer_runs else ""
    lines = [
        f"\n## LoRA: 16 streams over 4 adapters + base vs 16 base-only ({args.engine}, {when})\n",
        (f"- Command: `python -m bench.lora --engine {args.engine} --rounds {args.rounds} --requests {args.requests}"
        f" --max-tokens {args.max_tokens}{flag}`; machine: {platform.machine()}, {os.cpu_count()} cores (shared)."),
        ("- Model: SmolLM2-135M-Instruct float32; adapters alpha/bravo/charlie/delta (ranks 8/4/16/8, different"
        " targets) loaded with LORA_ADAPTERS, BERTH_MAX_LORAS=4; streaming chat, temperature 0, ignore_eos;"
        " the mixed load cycles smol, alpha, bravo, charlie, delta request by request."),
        f"- Load average at start {load_start[0]:.1f} / end {load_end[0]:.1f}; errors: {errors}.",
        (f"- Base-only tok/s per round: {', '.join(f'{r.output_tok_s:.1f}' for r in base_runs)};"
        f" mixed: {', '.join(f'{r.output_tok_s:.1f}' for r in mixed_runs)}."),
        (f"- TTFT p50 base {statistics.mean(r.ttft_p50_s or 0 for r in base_runs):.3f} s,"
        f" mixed {statistics.mean(r.ttft_p50_s or 0 for r in mixed_runs):.3f} s."),
        f"- **Ratio mixed / base-only: {ratio:.2f}x** (goal >= 0.8x: {'MET' if ratio >= 0.8 else 'NOT MET'}).",
    ]
    if peer_runs:
        peer_base = statistics.mean(r.output_tok_s for r in peer_runs[0])
        peer_mixed = statistics.mean(r.output_tok_s for r in peer_runs[1])
        against = mixed_tps / peer_mixed if peer_mixed else 0.0
        lines += [
            (f"- vLLM's own server, the same adapters and dtype (`--dtype float32 --enable-lora --max-loras 4"
            f" --max-lora-rank 16 --lora-modules"
            f" ...`), the same loads after Berth's: base-only tok/s {', '.join(f'{r.output_tok_s:.1f}' for r in peer_runs[0])};"
            f" mixed {', '.join(f'{r.output_tok_s:.1f}' for r in peer_runs[1])}; its own mixed / base-only"
            f" {peer_mixed / peer_base if peer_base else 0.0:.2f}x."),
            (f"- **Berth (vLLM) mixed / vLLM's own server mixed: {against:.2f}x** (goal >= 0.95x:"
            f" {'MET' if against >= 0.95 else 'NOT MET'}); base-only {base_tps / peer_base if peer_base else 0.0:.2f}x."),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if errors:  # a failed or interrupted run is not a result
        return 1
    with open(REPO / "bench" / "RESULTS.md", "a") as results:
        results.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
