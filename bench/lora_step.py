"""The cost of per-row LoRA in the transformers engine, without HTTP: 16-row decode steps, base-only vs mixed.

Builds SmolLM2 with four resident adapters (lora_bank.LoraBank), prefills 16 rows once, then times
decode steps alternately with every row on the base model and with rows spread over the 4 adapters
and the base (the bank's per-row scale vectors), and prints the ratio of step rates.

    .venv/bin/python -m bench.lora_step [--steps 40] [--threads 2] [--interleaved]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.lora import OUT, _adapters


def main(argv: list[str] | None = None) -> int:
    """Time the steps and print base/mixed step rates."""
    from berth_server.engines.kv_forward import RowFeed, forward
    from berth_server.engines.kv_tables import tables_for
    from berth_server.engines.lora_bank import LoraBank
    from berth_server.models.wheel_weights import smollm2_dir
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interleaved", action="store_true",
                   help="adapted and base rows interleaved (the gather/scatter path) instead of adapted first")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(OUT / "models")).eval()
    bank = LoraBank(model, max_loras=4, max_rank=16)
    slots = []
    for name, folder in _adapters().items():
        bank.register(name, name, folder)
        slots.append(bank.acquire(name))
    mixed = [None if i % 5 == 0 else slots[i % 5 - 1] for i in range(args.rows)]
    if not args.interleaved:  # the engine's scheduler puts the adapted rows first
        mixed.sort(key=lambda slot: slot is None)
    block = 16
    tables = tables_for(model, torch.device("cpu"), 1 + args.rows * -(-(8 + args.steps) // block), block)
    rows = [[1, 2, 3, 4, 5, 6, 7, 8] for _ in range(args.rows)]
    tables_of = [[tables.pool.allocate() or 0] for _ in rows]  # a block holds the prompt; more as rows grow
    with torch.inference_mode():
        logits = forward(model, tables.pool, [RowFeed(t, 0, r) for t, r in zip(tables_of, rows, strict=True)], False)
        times: dict[str, list[float]] = {"base": [], "mixed": []}
        for step in range(args.steps):
            for seq, table, token in zip(rows, tables_of, logits.argmax(-1).tolist(), strict=True):
                seq.append(token)
                if len(table) * block < len(seq):
                    table.append(tables.pool.allocate() or 0)
            kind = "base" if step % 2 == 0 else "mixed"
            bank.set_rows([None] * args.rows if kind == "base" else mixed)
            feeds = [RowFeed(t, len(r) - 1, r[-1:]) for t, r in zip(tables_of, rows, strict=True)]
            start = time.perf_counter()
            logits = forward(model, tables.pool, feeds, False)
            times[kind].append(time.perf_counter() - start)
    base, mix = statistics.median(times["base"]), statistics.median(times["mixed"])
    print(f"{args.rows} rows, median step: base-only {base * 1000:.1f} ms, mixed (4 adapters + base)"
          f" {mix * 1000:.1f} ms; step-rate ratio mixed/base {base / mix:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
