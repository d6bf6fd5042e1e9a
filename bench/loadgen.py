"""Closed-loop asyncio + httpx load generator for OpenAI-style chat/completions servers."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from typing import Any

import httpx

DEFAULT_PROMPT = "Tell me a long story about a lighthouse keeper and the sea."


@dataclasses.dataclass
class LoadConfig:
    """What to send: target, concurrency, request count and body shape."""

    url: str
    model: str
    concurrency: int = 16
    requests: int = 64
    max_tokens: int = 64
    stream: bool = True
    api: str = "chat"  # "chat" or "completions"
    prompt: str = DEFAULT_PROMPT
    timeout_s: float = 300.0
    ignore_eos: bool = True  # vLLM and Berth honour it; others ignore unknown fields
    models: tuple[str, ...] = ()  # when set, request i names models[i % len] (e.g. LoRA adapters and the base)


@dataclasses.dataclass
class RequestResult:
    """One request's outcome."""

    ok: bool
    latency_s: float
    ttft_s: float | None
    output_tokens: int
    tokens_from_usage: bool
    error: str | None = None


@dataclasses.dataclass
class LoadResult:
    """Aggregate figures of one closed-loop run."""

    url: str
    model: str
    api: str
    stream: bool
    concurrency: int
    requests: int
    max_tokens: int
    completed: int
    errors: int
    wall_s: float
    output_tokens: int
    output_tok_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    token_count_source: str  # "usage", "content-chunks" or "mixed"
    first_errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dataclasses.asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _endpoint(cfg: LoadConfig) -> str:
    base = cfg.url.rstrip("/")
    base = base.removesuffix("/v1")
    return f"{base}/v1/chat/completions" if cfg.api == "chat" else f"{base}/v1/completions"


def _body(cfg: LoadConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.max_tokens, "stream": cfg.stream,
                            "temperature": 0.0}
    if cfg.api == "chat":
        body["messages"] = [{"role": "user", "content": cfg.prompt}]
    else:
        body["prompt"] = cfg.prompt
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    return body


def _chunk_has_text(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or choice.get("text"):
            return True
    return False


async def _one_stream(client: httpx.AsyncClient, cfg: LoadConfig) -> RequestResult:
    start = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    async with client.stream("POST", _endpoint(cfg), json=_body(cfg)) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")[:200]
            return RequestResult(False, time.perf_counter() - start, None, 0, False,
                                 f"HTTP {resp.status_code}: {text}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk and not chunk.get("choices"):
                return RequestResult(False, time.perf_counter() - start, ttft, 0, False,
                                     f"stream error: {str(chunk['error'])[:200]}")
            if _chunk_has_text(chunk):
                if ttft is None:
                    ttft = time.perf_counter() - start
                chunks += 1
            usage = chunk.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                usage_tokens = int(usage["completion_tokens"])
    latency = time.perf_counter() - start
    if usage_tokens is not None:
        return RequestResult(True, latency, ttft, usage_tokens, True)
    return RequestResult(True, latency, ttft, chunks, False)


async def _one_plain(client: httpx.AsyncClient, cfg: LoadConfig) -> RequestResult:
    start = time.perf_counter()
    resp = await client.post(_endpoint(cfg), json=_body(cfg))
    latency = time.perf_counter() - start
    if resp.status_code != 200:
        return RequestResult(False, latency, None, 0, False, f"HTTP {resp.status_code}: {resp.text[:200]}")
    usage = resp.json().get("usage") or {}
    if usage.get("completion_tokens") is None:
        return RequestResult(False, latency, None, 0, False, "response has no usage.completion_tokens")
    # Without streaming the first token arrives with the whole answer.
    return RequestResult(True, latency, latency, int(usage["completion_tokens"]), True)


async def _one(client: httpx.AsyncClient, cfg: LoadConfig) -> RequestResult:
    start = time.perf_counter()
    try:
        if cfg.stream:
            return await _one_stream(client, cfg)
        return await _one_plain(client, cfg)
    except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
        return RequestResult(False, time.perf_counter() - start, None, 0, False,
                             f"{type(exc).__name__}: {exc}"[:200])


async def run_load(cfg: LoadConfig) -> LoadResult:
    """Run cfg.requests requests with cfg.concurrency in flight at any time; return the figures."""
    limits = httpx.Limits(max_connections=cfg.concurrency + 4, max_keepalive_connections=cfg.concurrency + 4)
    timeout = httpx.Timeout(cfg.timeout_s, connect=10.0)
    results: list[RequestResult] = []
    remaining = cfg.requests

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1  # single-threaded event loop: no race between check and decrement
                one = cfg
                if cfg.models:
                    one = dataclasses.replace(cfg, model=cfg.models[remaining % len(cfg.models)])
                results.append(await _one(client, one))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, min(cfg.concurrency, cfg.requests)))))
        wall = time.perf_counter() - start
    return summarize(cfg, results, wall)


def summarize(cfg: LoadConfig, results: list[RequestResult], wall_s: float) -> LoadResult:
    """Aggregate per-request results into a LoadResult."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    lats = [r.latency_s for r in ok]
    from_usage = {r.tokens_from_usage for r in ok}
    source = "usage" if from_usage == {True} else "content-chunks" if from_usage == {False} else "mixed"
    if not ok:
        source = "none"
    return LoadResult(
        url=cfg.url, model=cfg.model, api=cfg.api, stream=cfg.stream, concurrency=cfg.concurrency,
        requests=cfg.requests, max_tokens=cfg.max_tokens, completed=len(ok),
        errors=len(results) - len(ok), wall_s=round(wall_s, 4), output_tokens=tokens,
        output_tok_s=round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50), ttft_p95_s=percentile(ttfts, 95),
        latency_p50_s=percentile(lats, 50), latency_p95_s=percentile(lats, 95),
        token_count_source=source,
        first_errors=[r.error or "" for r in results if not r.ok][:5],
    )


def _parse(argv: list[str] | None) -> LoadConfig:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", required=True)
    p.add_argument("--models", default="", help="comma-separated names to cycle through, one per request")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--api", choices=["chat", "completions"], default="chat")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    a = p.parse_args(argv)
    return LoadConfig(url=a.url, model=a.model, concurrency=a.concurrency, requests=a.requests,
                      max_tokens=a.max_tokens, stream=a.stream, api=a.api, prompt=a.prompt,
                      timeout_s=a.timeout, ignore_eos=a.ignore_eos,
                      models=tuple(m.strip() for m in a.models.split(",") if m.strip()))


def main(argv: list[str] | None = None) -> int:
    """CLI: run the load and print the result as JSON (plus a note when tokens were not from usage)."""
    result = asyncio.run(run_load(_parse(argv)))
    out = result.to_dict()
    if result.token_count_source != "usage":
        out["note"] = ("server sent no usage in the stream: tokens counted as content chunks"
                       if result.token_count_source in ("content-chunks", "mixed") else "no successful requests")
    print(json.dumps(out, indent=2))
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
