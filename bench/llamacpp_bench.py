"""SmolLM2-135M-Instruct, 16 concurrent streaming chats: Berth on llama.cpp (Q4_1) vs llama.cpp's own server
(xllamacpp's HTTP server on the same file) vs Berth on transformers (float32), with model-process memory.

    python -m bench.llamacpp_bench [--requests 32] [--max-tokens 64] [--no-write]

Every server gets the same slots (16) and per-request context (1024 tokens), every core, and two
unmeasured warm-up requests; the figures and the load average are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import peers
from bench.loadgen import LoadConfig, run_load

SLOTS = 16
CONTEXT = 1024
# llama.cpp's own server in a child process: continuous batching, no prompt-cache RAM, one KV cache per
# slot (as Berth runs it). tests/llamacpp_oracle.py starts the same one as the reference for Berth's answers.
PEER_SCRIPT = """
import signal, sys, time, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]; p.port = int(sys.argv[2]); p.n_parallel = int(sys.argv[3])
p.n_ctx = int(sys.argv[3]) * int(sys.argv[4]); p.cont_batching = True; p.cache_ram_mib = 0; p.kv_unified = False
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(sys.argv[5])
server = xllamacpp.Server(p)
print("listening", server.listening_address, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(3600)
"""


def _python_env() -> dict[str, str]:
    """Run the servers with this interpreter's venv and this checkout's sources."""
    repo = peers.REPO
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{repo / 'container'}:{repo / 'sdk'}"}


def start_llamacpp_peer(gguf: Path, port: int, threads: int) -> peers.Peer:
    """llama.cpp's own server (xllamacpp.Server listening on `port`), same slots, context and threads as Berth."""
    env = {**os.environ, **_python_env()}
    argv = [sys.executable, "-c", PEER_SCRIPT, str(gguf), str(port), str(SLOTS), str(CONTEXT), str(threads)]
    proc, log_path = peers._spawn(f"llamacpp-server-{port}", argv, env)
    base = f"http://127.0.0.1:{port}"
    ready = peers.wait_http_ok(f"{base}/health", proc, 300.0, log_path)
    return peers.Peer("llama.cpp-server", base, peers.first_model_id(base), proc, log_path, ready_s=ready)


def model_process_rss_mb(peer: peers.Peer) -> float | None:
    """RSS of the process that holds the model: Berth's model process, or the peer itself."""
    root = psutil.Process(peer.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            if "berth_server.model_process" in " ".join(proc.cmdline()):
                return round(proc.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    return round(root.memory_info().rss / 2**20, 1) if peer.name == "llama.cpp-server" else None


def measure(peer: peers.Peer, args: argparse.Namespace) -> dict[str, Any]:
    """Two warm-up requests, then the measured load; the figures plus memory."""
    warm = LoadConfig(url=peer.base_url, model=peer.model, concurrency=2, requests=2, max_tokens=8)
    asyncio.run(run_load(warm))
    cfg = LoadConfig(url=peer.base_url, model=peer.model, concurrency=SLOTS, requests=args.requests,
                     max_tokens=args.max_tokens, timeout_s=600.0)
    result = asyncio.run(run_load(cfg)).to_dict()
    result["model_rss_mb"] = model_process_rss_mb(peer)
    result["ready_s"] = round(peer.ready_s, 1)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start each server in turn, measure it, stop it."""
    from berth_server.models.wheel_weights import smollm2_dir, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    berth_env = {**_python_env(), "MAX_CONCURRENT_REQUESTS": str(SLOTS), "MAX_TOTAL_TOKENS": str(CONTEXT),
                 "BERTH_LLAMACPP_THREADS": str(args.threads)}
    starters = {
        "berth-llama.cpp": lambda: peers.start_berth(gguf, args.port, "llama.cpp", extra_env=berth_env),
        "llama.cpp-server": lambda: start_llamacpp_peer(gguf, args.port + 1, args.threads),
        "berth-transformers": lambda: peers.start_berth(smollm2_dir(peers.OUT / "berth-home"), args.port + 2,
                                                        "transformers", extra_env=berth_env),
        "xinference-llama.cpp": lambda: peers.start_xinference_llamacpp(gguf, args.port + 3, SLOTS, CONTEXT,
                                                                         args.threads),
    }
    results: dict[str, Any] = {"loadavg_start": Path("/proc/loadavg").read_text().strip()}
    for name, start in starters.items():
        if args.only and name not in args.only:
            continue
        peer = start()
        try:
            results[name] = measure(peer, args)
        finally:
            peer.stop()
        print(name, results[name], flush=True)
    results["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    return results


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """A RESULTS.md section."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "-C", str(peers.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    lines = [f"## llama.cpp engine: SmolLM2-135M-Instruct, {when} (commit {commit})", "",
             (f"`python -m bench.llamacpp_bench --requests {args.requests} --max-tokens {args.max_tokens}`; "
             f"{SLOTS} concurrent streaming chats, {args.max_tokens} tokens each (ignore_eos, temperature 0), "
             f"{SLOTS} slots and {CONTEXT} tokens a request on every server, {args.threads} llama.cpp thread(s) "
             f"(transformers: its default, every core). "
             f"Load average {res['loadavg_start']} at start, "
             f"{res.get('loadavg_end')} at end."), "",
             "| server | weights | tok/s | TTFT p50 s | TTFT p95 s | latency p50 s | errors | model process RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    weights = {"berth-llama.cpp": "Q4_1 GGUF", "llama.cpp-server": "Q4_1 GGUF", "berth-transformers": "float32",
               "xinference-llama.cpp": "Q4_1 GGUF"}
    for name, kind in weights.items():
        r = res.get(name)
        if r:
            lines.append(f"| {name} | {kind} | {r['output_tok_s']} | {r['ttft_p50_s']} | {r['ttft_p95_s']} "
                         f"| {r['latency_p50_s']} | {r['errors']} | {r['model_rss_mb']} |")
    b, p, t = res.get("berth-llama.cpp") or {}, res.get("llama.cpp-server") or {}, res.get("berth-transformers") or {}
    x = res.get("xinference-llama.cpp") or {}
    lines += ["", (f"- Berth llama.cpp vs llama.cpp's own server: tok/s {_ratio(b.get('output_tok_s'), p.get('output_tok_s'))}"
              f" (goal >= 0.95x), TTFT p50 {_ratio(b.get('ttft_p50_s'), p.get('ttft_p50_s'))} (goal <= 1.1x)."),
              (f"- Berth llama.cpp (Q4_1) vs Berth transformers (float32): tok/s "
              f"{_ratio(b.get('output_tok_s'), t.get('output_tok_s'))}, model-process memory "
              f"{b.get('model_rss_mb')} MB vs {t.get('model_rss_mb')} MB."),
              (f"- Berth llama.cpp vs Xinference 4.1's llama.cpp engine: tok/s "
               f"{_ratio(b.get('output_tok_s'), x.get('output_tok_s'))}, TTFT p50 "
               f"{_ratio(b.get('ttft_p50_s'), x.get('ttft_p50_s'))}." if x else
               "- Xinference 4.1's llama.cpp engine: not measured in this run (--only, or no bench/.venv-xinference)."),
              ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=18500)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads on both llama.cpp servers (one is kinder to a loaded machine)")
    parser.add_argument("--only", action="append",
                        help="berth-llama.cpp, llama.cpp-server, berth-transformers or xinference-llama.cpp")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    res = run(args)
    lines = render(res, args)
    print("\n".join(lines))
    if not args.no_write:
        with open(peers.REPO / "bench" / "RESULTS.md", "a") as handle:
            handle.write("\n" + "\n".join(lines))
    print(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
