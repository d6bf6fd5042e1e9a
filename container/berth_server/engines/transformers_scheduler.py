"""The transformers engine's batch scheduler: it owns the slots, their lock and the batching thread.

Each iteration decodes one token for every running row, then prefills the newcomers as one batch
and merges them into the running cache (transformers_batch.KVBatch), so a request never waits for
the batch to drain. Other threads only submit, cancel and count, under the scheduler's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from berth_server.engines.base import EngineStep
from berth_server.engines.lora_bank import LoraBank
from berth_server.engines.sampling import sample
from berth_server.engines.transformers_batch import KVBatch
from berth_server.engines.transformers_rows import Slot, make_sampler, next_step, prompt_logprobs
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest, Overloaded

log = logging.getLogger(__name__)

DEFAULT_PREFILL_TOKENS = 8192  # per iteration, when MAX_BATCH_PREFILL_TOKENS is unset


@dataclass(frozen=True)
class BatchLimits:
    """The sizes the scheduler works within."""

    max_batch_size: int
    max_model_len: int
    vocab_size: int
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS  # prompt tokens admitted per iteration
    cpu_threads: int = 0  # intra-op threads of the batching thread on CPU; 0 leaves torch's default


class BatchScheduler:
    """Continuous batching of Slots around model.forward, on one thread of its own."""

    def __init__(self, model: Any, device: torch.device, limits: BatchLimits, lora: LoraBank | None = None):
        self.model = model
        self.device = device
        self.limits = limits
        self.lora = lora  # per-row adapters (lora_bank.py); rows hold a slot from admission to finish
        self._cond = threading.Condition()
        self._waiting: deque[Slot] = deque()
        self._running: list[Slot] = []
        self._by_id: dict[str, Slot] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- any thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching thread."""
        self._thread = threading.Thread(target=self._run, name="berth-transformers", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the scheduler takes requests."""
        return self._thread is not None and not self._stopping

    def submit(self, slot: Slot) -> None:
        """Queue a request; its steps go to slot.emit."""
        with self._cond:
            if self._stopping:
                raise GenerationFailed("the transformers engine is not running")
            rid = slot.request.request_id
            if rid in self._by_id:
                raise InvalidRequest(f"request id {rid!r} is already running", param="request_id")
            self._by_id[rid] = slot
            self._waiting.append(slot)
            self._cond.notify()

    def cancel(self, request_id: str, silent: bool) -> None:
        """Mark a request for removal at the next step (the batching thread frees its row)."""
        with self._cond:
            slot = self._by_id.get(request_id)
            if slot is None:
                return
            slot.cancel = "abort"
            slot.silent = slot.silent or silent
            self._cond.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        with self._cond:
            return len(self._running), len(self._waiting)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread, then end every request still known with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            pending = list(self._by_id.values())
            self._by_id.clear()
            self._waiting.clear()
            self._running = []
        for slot in pending:
            slot.send(GenerationFailed("the engine shut down"))

    # ---- the batching thread -------------------------------------------------------------------

    def _run(self) -> None:
        """Run until stop(); a failure ends the affected requests, never the loop."""
        batch = KVBatch(self.model)
        if self.limits.cpu_threads:  # OpenMP keeps intra-op threads per OS thread: set them here
            torch.set_num_threads(self.limits.cpu_threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        return
                    newcomers = self._admit()
                try:
                    self._drop(batch, [s.cancel is None for s in self._running])
                    if self._running:
                        self._decode(batch)
                    if newcomers:
                        self._prefill(batch, newcomers)
                    self._drop(batch, [s.finish is None for s in self._running])
                except Exception as exc:
                    log.exception("batch step failed; ending %d requests", len(self._running))
                    for slot in [*self._running, *newcomers]:
                        if slot.finish is None:
                            self._fail(slot, exc)
                    with self._cond:
                        self._running = []
                    batch = KVBatch(self.model)

    def _admit(self) -> list[Slot]:
        """Take waiting requests (caller holds the lock) while batch slots and the prefill budget allow."""
        for slot in [s for s in self._waiting if s.cancel is not None]:  # aborted while queued
            self._waiting.remove(slot)
            self._finish(slot, EngineStep(token_ids=[], finish="abort"))
        taken: list[Slot] = []
        used = 0
        while self._waiting and len(self._running) + len(taken) < self.limits.max_batch_size:
            slot = self._waiting[0]
            size = len(slot.request.prompt_token_ids)
            # Prompt logprobs need logits at every position ([B, L, V]): such a request prefills alone.
            if taken and (used + size > self.limits.prefill_tokens or slot.request.sampling.prompt_logprobs):
                break
            placed = self._place_adapter(slot)
            if placed is None:  # every LoRA slot is busy with running rows: wait for one to free
                break
            self._waiting.popleft()
            if not placed:
                continue
            taken.append(slot)
            used += size
            if slot.request.sampling.prompt_logprobs:
                break
        return taken

    def _place_adapter(self, slot: Slot) -> bool | None:
        """Give a request its adapter's LoRA slot: True when placed (or none wanted), False when it
        failed (the request has its error), None when it must wait for a slot."""
        name = slot.request.adapter
        if name is None:
            return True
        try:
            if self.lora is None:
                raise GenerationFailed(f"adapter '{name}' not found: LoRA is not enabled")
            slot.lora_slot = self.lora.acquire(name)
            if slot.lora_slot is None and not self.lora.busy():  # no row will ever free a slot: all pinned
                raise Overloaded(f"adapter '{name}' cannot be loaded: every LoRA slot holds a pinned adapter")
        except Exception as exc:  # noqa: BLE001 - removed meanwhile, or unreadable: this request only
            self._fail(slot, exc)
            return False
        return None if slot.lora_slot is None else True

    def _use_adapters(self, rows: list[Slot]) -> None:
        """Tell the LoRA bank which adapter each row of the next forward uses."""
        if self.lora is not None:
            self.lora.set_rows([s.lora_slot for s in rows])

    def _drop(self, batch: KVBatch, keep: list[bool]) -> None:
        """Remove rows whose keep is False (aborting cancelled ones) and shrink the cache."""
        if all(keep):
            return
        for slot, kept in zip(self._running, keep, strict=True):
            if not kept and slot.finish is None:
                self._finish(slot, EngineStep(token_ids=[], finish=slot.cancel or "abort"))
        with self._cond:
            self._running = [s for s, k in zip(self._running, keep, strict=True) if k]
        batch.select([i for i, k in enumerate(keep) if k])

    def _decode(self, batch: KVBatch) -> None:
        """One token for every running row."""
        tokens = torch.tensor([s.last_token for s in self._running], dtype=torch.long, device=self.device)
        self._use_adapters(self._running)
        logits = batch.decode(tokens)
        for slot, choice in zip(self._running, sample(logits, [s.sampler for s in self._running]), strict=True):
            self._advance(slot, choice)

    def _prefill(self, batch: KVBatch, newcomers: list[Slot]) -> None:
        """Prefill the newcomers as one batch, emit their first tokens and merge them into the batch."""
        ready: list[Slot] = []
        for slot in newcomers:
            try:
                make_sampler(slot, self.limits.vocab_size, self.device)
                ready.append(slot)
            except Exception as exc:  # noqa: BLE001 - one request's bad values fail that request only
                self._fail(slot, exc)
        if not ready:
            return
        prompts = [s.request.prompt_token_ids for s in ready]
        want_prompt = [s.request.sampling.prompt_logprobs for s in ready]
        try:
            self._use_adapters(ready)
            fresh, logits = KVBatch.prefill(self.model, prompts, self.device, any(want_prompt))
        except Exception as exc:
            log.exception("prefill of %d requests failed", len(ready))
            for slot in ready:
                self._fail(slot, exc)
            return
        choices = sample(logits[:, -1, :], [s.sampler for s in ready])
        for i, (slot, choice) in enumerate(zip(ready, choices, strict=True)):
            self._advance(slot, choice, prompt_logprobs(logits[i], prompts[i]) if want_prompt[i] else None)
        batch.extend(fresh)
        with self._cond:
            self._running = self._running + ready

    def _advance(self, slot: Slot, choice: Any, prompt_lp: list[float | None] | None = None) -> None:
        """Emit a row's step for its new token (or its error); the last one forgets the row."""
        if isinstance(choice, Exception):
            self._fail(slot, choice)
            return
        step = next_step(slot, choice, self.limits.max_model_len, prompt_lp)
        if step.finish is not None:
            self._finish(slot, step)
        else:
            slot.send(step)

    def _finish(self, slot: Slot, item: EngineStep | BaseException) -> None:
        """Emit the last item of a request and forget it (the lock is reentrant: callers may hold it)."""
        slot.finish = item.finish if isinstance(item, EngineStep) and item.finish else "abort"
        if slot.lora_slot is not None and self.lora is not None:
            self.lora.release(slot.lora_slot)
            slot.lora_slot = None
        with self._cond:
            if self._by_id.get(slot.request.request_id) is slot:
                del self._by_id[slot.request.request_id]
        slot.send(item)

    def _fail(self, slot: Slot, exc: BaseException) -> None:
        """End one request with an error its generator raises."""
        error = exc if isinstance(exc, BerthError) else GenerationFailed(f"generation failed: {exc}")
        self._finish(slot, error)
