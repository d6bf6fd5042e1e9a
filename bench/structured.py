"""Constrained vs unconstrained throughput: 16 concurrent streams, half of them held to a JSON schema.

Usage: python -m bench.structured [--engines transformers,vllm] [--requests 2] [--max-tokens 64]
Starts Berth on SmolLM2-135M-Instruct (float32) per engine, runs the same closed-loop load twice
(all 16 streams free; then 8 free + 8 constrained) and prints tok/s, the ratio and the load average.
The schema forces a long array, so constrained rows run to max_tokens like the free ones
(which use ignore_eos): both loads generate the same number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SCHEMA = {"type": "object", "properties": {"words": {"type": "array", "minItems": 200,
                                                     "items": {"type": "string", "maxLength": 12}}},
          "required": ["words"]}
PROMPT = "List many words about the sea, as JSON."


def body(constrained: bool, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request (greedy), constrained by SCHEMA or free with ignore_eos."""
    out: dict[str, Any] = {"model": "smol", "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                           "max_tokens": max_tokens, "temperature": 0, "stream_options": {"include_usage": True}}
    if constrained:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
    else:
        out["ignore_eos"] = True
    return out


async def one(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> int:
    """Stream one request; return its completion tokens (from usage)."""
    tokens = 0
    async with client.stream("POST", url, json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
    return tokens


async def load(base: str, constrained_workers: int, workers: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """Closed loop: `workers` streams, each sending `requests` in a row; the first ones constrained."""
    url = f"{base}/v1/chat/completions"
    per_kind = {"free": 0, "constrained": 0}

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        kind = "constrained" if i < constrained_workers else "free"
        for _ in range(requests):
            tokens = await one(client, url, body(kind == "constrained", max_tokens))
            per_kind[kind] += tokens  # after the await: `+= await` would read the total before it

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(i, client) for i in range(workers)))
        wall = time.perf_counter() - start
    total = sum(per_kind.values())
    return {"wall_s": wall, "tokens": total, "tok_s": total / wall, "free_tok_s": per_kind["free"] / wall,
            "constrained_tokens": per_kind["constrained"]}


def run_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start Berth on one engine, warm it, run both loads, stop it."""
    from berth_server.models.wheel_weights import smollm2_dir

    from tests.conftest import TEST_MODEL_CACHE
    from tests.integration.conftest import launch_serve

    env = {"BERTH_MODEL_UID": "smol", **({"DTYPE": "float32"} if engine == "vllm" else {})}
    home = Path(tempfile.mkdtemp(prefix=f"bench-structured-{engine}-"))
    server = launch_serve(smollm2_dir(TEST_MODEL_CACHE), home, engine=engine, env=env)
    try:
        for constrained in (False, True):  # warm: first forward passes, the schema's compilation
            asyncio.run(load(server.base_url, int(constrained), 1, 1, 8))
        before = os.getloadavg()
        free = asyncio.run(load(server.base_url, 0, args.streams, args.requests, args.max_tokens))
        mixed = asyncio.run(load(server.base_url, args.streams // 2, args.streams, args.requests, args.max_tokens))
        after = os.getloadavg()
    finally:
        server.stop()
    return {"engine": engine, "free": free, "mixed": mixed, "ratio": mixed["tok_s"] / free["tok_s"],
            "load_before": before, "load_after": after}


def main() -> None:
    """Run the benchmark and print one JSON line per engine."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    for engine in args.engines.split(","):
        print(json.dumps(run_engine(engine.strip(), args)), flush=True)


if __name__ == "__main__":
    main()
