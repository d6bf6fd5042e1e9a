"""The transformers engine's batching thread: decode the running rows, prefill newcomers, emit steps."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from berth_server.engines.base import EngineFinish, EngineStep
from berth_server.engines.sampling import Choice, RowSampler, sample
from berth_server.engines.transformers_batch import KVBatch
from berth_server.errors import GenerationFailed

if TYPE_CHECKING:
    from berth_server.engines.transformers_engine import TransformersEngine, _Slot

log = logging.getLogger(__name__)

DEFAULT_PREFILL_TOKENS = 8192  # per iteration, when MAX_BATCH_PREFILL_TOKENS is unset


def run_loop(engine: TransformersEngine) -> None:
    """Run until shutdown; a failure ends the affected requests, never the loop."""
    batch = KVBatch(engine.model)
    if engine.cpu_threads:  # OpenMP keeps intra-op threads per OS thread: set them on the loop's own
        torch.set_num_threads(engine.cpu_threads)
    with torch.inference_mode():
        while True:
            with engine._cond:
                while not engine._stopping and not engine._waiting and not engine._running:
                    engine._cond.wait()
                if engine._stopping:
                    return
                newcomers = _admit(engine)
            try:
                _drop(engine, batch, [s.cancel is None for s in engine._running])
                if engine._running:
                    _decode(engine, batch)
                if newcomers:
                    _prefill(engine, batch, newcomers)
                _drop(engine, batch, [s.finish is None for s in engine._running])
            except Exception as exc:
                log.exception("batch step failed; ending %d requests", len(engine._running))
                for slot in [*engine._running, *newcomers]:
                    if slot.finish is None:
                        _fail(engine, slot, exc)
                with engine._cond:
                    engine._running = []
                batch = KVBatch(engine.model)


def _admit(engine: TransformersEngine) -> list[_Slot]:
    """Take waiting requests (under the lock) while batch slots and the prefill budget allow."""
    budget = engine.settings.max_batch_prefill_tokens or DEFAULT_PREFILL_TOKENS
    for slot in [s for s in engine._waiting if s.cancel is not None]:  # aborted while queued
        engine._waiting.remove(slot)
        _finish(engine, slot, EngineStep(token_ids=[], finish="abort"))
    taken: list[_Slot] = []
    used = 0
    while engine._waiting and len(engine._running) + len(taken) < engine.max_batch_size:
        slot = engine._waiting[0]
        size = len(slot.request.prompt_token_ids)
        # Prompt logprobs need logits at every position ([B, L, V]): such a request prefills alone.
        if taken and (used + size > budget or slot.request.sampling.prompt_logprobs):
            break
        engine._waiting.popleft()
        taken.append(slot)
        used += size
        if slot.request.sampling.prompt_logprobs:
            break
    return taken


def _drop(engine: TransformersEngine, batch: KVBatch, keep: list[bool]) -> None:
    """Remove rows whose keep is False (aborting cancelled ones) and shrink the cache."""
    if all(keep):
        return
    for slot, kept in zip(engine._running, keep, strict=True):
        if not kept and slot.finish is None:
            _finish(engine, slot, EngineStep(token_ids=[], finish=slot.cancel or "abort"))
    with engine._cond:
        engine._running = [s for s, k in zip(engine._running, keep, strict=True) if k]
    batch.select([i for i, k in enumerate(keep) if k])


def _decode(engine: TransformersEngine, batch: KVBatch) -> None:
    """One token for every running row."""
    tokens = torch.tensor([s.last_token for s in engine._running], dtype=torch.long, device=engine.device)
    logits = batch.decode(tokens)
    choices = sample(logits, [s.sampler for s in engine._running])
    for slot, choice in zip(engine._running, choices, strict=True):
        _advance(engine, slot, choice)


def _prefill(engine: TransformersEngine, batch: KVBatch, newcomers: list[_Slot]) -> None:
    """Prefill the newcomers as one batch, emit their first tokens and merge them into the batch."""
    ready: list[_Slot] = []
    for slot in newcomers:
        try:
            slot.sampler = RowSampler(
                slot.request.sampling, engine.vocab_size, engine.device, slot.request.prompt_token_ids,
            )
            ready.append(slot)
        except Exception as exc:  # noqa: BLE001 - one request's bad values fail that request only
            _fail(engine, slot, exc)
    if not ready:
        return
    prompts = [s.request.prompt_token_ids for s in ready]
    want_prompt = [s.request.sampling.prompt_logprobs for s in ready]
    try:
        fresh, logits = KVBatch.prefill(engine.model, prompts, engine.device, any(want_prompt))
    except Exception as exc:
        log.exception("prefill of %d requests failed", len(ready))
        for slot in ready:
            _fail(engine, slot, exc)
        return
    for slot in ready:
        _ban_stops(slot)
    choices = sample(logits[:, -1, :], [s.sampler for s in ready])
    for i, (slot, choice) in enumerate(zip(ready, choices, strict=True)):
        prompt_lp = _prompt_logprobs(logits[i], prompts[i]) if want_prompt[i] else None
        _advance(engine, slot, choice, prompt_lp)
    batch.extend(fresh)
    with engine._cond:
        engine._running = engine._running + ready


def _prompt_logprobs(logits: torch.Tensor, prompt: list[int]) -> list[float | None]:
    """Logprob of each prompt token given the ones before it (None for the first); logits are left-padded."""
    n = len(prompt)
    rows = logits[logits.shape[0] - n: logits.shape[0] - 1].float()
    if n < 2:
        return [None]
    targets = torch.tensor(prompt[1:], dtype=torch.long, device=rows.device)
    values = torch.log_softmax(rows, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return [None, *values.tolist()]


def _ban_stops(slot: _Slot) -> None:
    """Mask stop tokens while min_new_tokens is unmet (as HF's MinNewTokensLength processor does)."""
    sampler: RowSampler = slot.sampler
    if slot.generated < slot.request.sampling.min_new_tokens:
        sampler.banned = [t for t in slot.stop_ids if 0 <= t < sampler.vocab_size]
    else:
        sampler.banned = []


def _advance(
    engine: TransformersEngine, slot: _Slot, choice: Choice | Exception,
    prompt_logprobs: list[float | None] | None = None,
) -> None:
    """Record a row's new token, decide whether it finished, and emit its step."""
    if isinstance(choice, Exception):
        _fail(engine, slot, choice)
        return
    token = choice.token
    slot.generated += 1
    slot.last_token = token
    slot.sampler.observe(token)
    _ban_stops(slot)
    finish: EngineFinish | None = None
    if token in slot.stop_ids:
        finish = "eos"
    elif slot.generated >= slot.request.max_new_tokens or (
        len(slot.request.prompt_token_ids) + slot.generated >= engine.max_model_len
    ):
        finish = "length"
    step = EngineStep(token_ids=[token], finish=finish, prompt_logprobs=prompt_logprobs)
    if choice.logprob is not None:
        step.logprobs = [choice.logprob]
        step.top_logprobs = [choice.top or []]
    if finish is not None:
        _finish(engine, slot, step)
    else:
        slot.send(step)


def _finish(engine: TransformersEngine, slot: _Slot, item: EngineStep | BaseException) -> None:
    """Emit the last item of a request and forget it."""
    slot.finish = item.finish if isinstance(item, EngineStep) and item.finish else "abort"
    with engine._cond:
        if engine._by_id.get(slot.request.request_id) is slot:
            del engine._by_id[slot.request.request_id]
    slot.send(item)


def _fail(engine: TransformersEngine, slot: _Slot, exc: BaseException) -> None:
    """End one request with an error its generator raises."""
    error = exc if isinstance(exc, GenerationFailed) else GenerationFailed(f"generation failed: {exc}")
    _finish(engine, slot, error)
