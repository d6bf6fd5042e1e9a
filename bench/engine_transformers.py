"""Tokens/s of the transformers engine at batch 1 and 16 (greedy, 64 new tokens) versus model.generate.

Usage: .venv/bin/python bench/engine_transformers.py [--model-dir DIR] [--recipe bench] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from berth_server.canonical import SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.engines.base import EngineRequest
from berth_server.engines.transformers_engine import TransformersEngine
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings


def _prompts(batch: int) -> list[list[int]]:
    """Distinct prompts of slightly different lengths (so the batch is really left-padded)."""
    return [[1, *range(10 + i, 30 + i + (i % 5))] for i in range(batch)]


async def _engine_run(engine: TransformersEngine, batch: int, new_tokens: int) -> tuple[float, float]:
    """All prompts at once through the engine: (tokens/s, mean time to first token)."""
    start = time.perf_counter()
    firsts: list[float] = []

    async def one(i: int, prompt: list[int]) -> int:
        request = EngineRequest(f"b{batch}-{i}", prompt, SamplingParams(greedy=True), max_new_tokens=new_tokens)
        count = 0
        async for step in engine.generate(request):
            if count == 0:
                firsts.append(time.perf_counter() - start)
            count += len(step.token_ids)
        return count

    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(_prompts(batch))))
    return sum(counts) / (time.perf_counter() - start), sum(firsts) / len(firsts)


def _generate_run(model: torch.nn.Module, batch: int, new_tokens: int) -> float:
    """The same prompts through model.generate, left-padded: tokens/s."""
    prompts = _prompts(batch)
    width = max(len(p) for p in prompts)
    ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )
    return batch * new_tokens / (time.perf_counter() - start)


async def _main(model_dir: Path, new_tokens: int, batches: list[int]) -> None:
    """Warm up, then measure each batch size on both paths."""
    config = ModelLaunchConfig(uid="bench", source=str(model_dir), model_name="bench")
    engine = TransformersEngine(model_dir, config, Settings(device="cpu"))
    info = await engine.start()
    if engine.cpu_threads:  # the same intra-op threads for model.generate as the engine's loop uses
        torch.set_num_threads(engine.cpu_threads)
    print(f"loaded {model_dir} on {info.device} ({info.dtype}); torch threads={torch.get_num_threads()}")
    await _engine_run(engine, 2, 4)  # warm-up
    for batch in batches:
        tps, ttft = await _engine_run(engine, batch, new_tokens)
        ref = _generate_run(engine.model, batch, new_tokens)
        print(f"batch {batch:>2}: engine {tps:7.1f} tok/s (mean TTFT {ttft * 1000:6.0f} ms)  "
              f"model.generate {ref:7.1f} tok/s  ratio {tps / ref:4.2f}")
    await engine.shutdown()


def main() -> None:
    """Parse arguments, build the demo model if needed, run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--recipe", default="bench", choices=sorted(RECIPES))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    model_dir = args.model_dir or Path(tempfile.gettempdir()) / f"berth-demo-{args.recipe}"
    build(RECIPES[args.recipe], model_dir)
    asyncio.run(_main(model_dir, args.new_tokens, [int(b) for b in args.batches.split(",")]))


if __name__ == "__main__":
    main()
