"""The transformers engine's block pool on every catalog architecture: greedy tokens equal generate's
while rows join mid-batch, long prompts go in chunks, a repeated prompt reuses cached blocks, and a
pool too small for every row at once forces preemption and recompute.

In-process (the scheduler around each family's tiny model, no server), so every family runs in seconds.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from berth_server.canonical import SamplingParams
from berth_server.engines.base import EngineRequest
from berth_server.engines.kv_tables import tables_for
from berth_server.engines.transformers_engine import _attention_kwargs
from berth_server.engines.transformers_rows import Slot
from berth_server.engines.transformers_scheduler import BatchLimits, BatchScheduler

from .arch_models import FAMILIES, ArchFamily, build_family
from .conftest import MODEL_CACHE

pytestmark = pytest.mark.timeout(300)
NEW = 12
LENGTHS = (5, 23, 40, 31)  # past the sliding windows (16); 40 + 12 tokens = 13 blocks of 4


def _reference(model: Any, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    return out[0, len(prompt):].tolist()


def _submit(scheduler: BatchScheduler, rid: str, prompt: list[int]) -> queue.Queue[Any]:
    out: queue.Queue[Any] = queue.Queue()
    request = EngineRequest(request_id=rid, prompt_token_ids=prompt, sampling=SamplingParams(greedy=True),
                            max_new_tokens=NEW)
    scheduler.submit(Slot(request=request, emit=out.put, stop_ids=frozenset()))
    return out


def _tokens(out: queue.Queue[Any]) -> list[int]:
    steps = [out.get(timeout=120) for _ in range(NEW)]
    assert all(not isinstance(s, BaseException) for s in steps), steps
    assert steps[-1].finish == "length"
    return [t for s in steps for t in s.token_ids]


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_pool_preemption_chunks_and_prefix_reuse_stay_exact(family: ArchFamily) -> None:
    from transformers import AutoModelForCausalLM

    model_dir: Path = build_family(family, MODEL_CACHE / f"arch-{family.name}")
    # Loaded as the engine loads it (eager attention where soft-capping needs it); generate runs eager.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 **_attention_kwargs(str(model_dir), {}, False)).eval()
    reference_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    vocab = model.config.get_text_config(decoder=True).vocab_size
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in LENGTHS]
    with torch.inference_mode():
        expected = [_reference(reference_model, p) for p in prompts]
    cpu = torch.device("cpu")
    # 20 usable blocks of 4 tokens: any one row fits (13 blocks), all four at once do not.
    tables = tables_for(model, cpu, num_blocks=21, block_size=4)
    limits = BatchLimits(max_batch_size=4, max_model_len=512, vocab_size=vocab, prefill_tokens=7)
    scheduler = BatchScheduler(model, cpu, limits, tables)
    scheduler.start()
    try:
        first = [_submit(scheduler, f"a{i}", p) for i, p in enumerate(prompts[:2])]
        assert first[0].get(timeout=120).token_ids == expected[0][:1]  # decoding: the others join mid-batch
        later = [_submit(scheduler, f"b{i}", p) for i, p in enumerate(prompts[2:])]
        got = [expected[0][:1] + _tokens_after_first(first[0]), _tokens(first[1])] + [_tokens(q) for q in later]
        assert got == expected
        assert scheduler.preempted > 0
        assert _tokens(_submit(scheduler, "again", prompts[2])) == expected[2]
        hits = scheduler.tables.pool.hits
        assert _tokens(_submit(scheduler, "again2", prompts[2])) == expected[2]
        assert scheduler.tables.pool.hits - hits == 36  # the repeat reused the 9 blocks of its 40-token prompt
        deadline = time.monotonic() + 10
        while scheduler.counts() != (0, 0) and time.monotonic() < deadline:  # the last row is dropped after its step
            time.sleep(0.01)
        assert scheduler.counts() == (0, 0)
    finally:
        scheduler.stop()


def _tokens_after_first(out: queue.Queue[Any]) -> list[int]:
    steps = [out.get(timeout=120) for _ in range(NEW - 1)]
    assert all(not isinstance(s, BaseException) for s in steps), steps
    return [t for s in steps for t in s.token_ids]
