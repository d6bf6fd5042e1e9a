"""The transformers engine's batch scheduler: it owns the slots, their lock and the batching thread.

Each iteration decodes one token for every running row, then feeds the rows still prefilling up to
a token budget (long prompts go in chunks between decode steps), all over one block pool
(kv_pool.py, kv_tables.py, kv_forward.py): a request never waits for the batch to drain, joins
with whatever prefix is cached, and when the pool is full the newest row is preempted and later
recomputed. Other threads only submit, cancel and count, under the scheduler's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from berth_server.engines.base import EngineStep
from berth_server.engines.kv_forward import RowFeed, forward
from berth_server.engines.kv_tables import BlockTables
from berth_server.engines.lora_bank import LoraBank
from berth_server.engines.sampling import sample
from berth_server.engines.transformers_rows import Slot, make_sampler, next_step, prompt_logprobs
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_PREFILL_TOKENS = 512  # prompt tokens fed per iteration (a chunk), when MAX_BATCH_PREFILL_TOKENS is unset


@dataclass(frozen=True)
class BatchLimits:
    """The sizes the scheduler works within."""

    max_batch_size: int
    max_model_len: int
    vocab_size: int
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS  # prompt tokens fed per iteration, in chunks
    cpu_threads: int = 0  # intra-op threads of the batching thread on CPU; 0 leaves torch's default


class BatchScheduler:
    """Continuous batching of Slots around model.forward, on one thread of its own."""

    def __init__(self, model: Any, device: torch.device, limits: BatchLimits, tables: BlockTables,
                 lora: LoraBank | None = None):
        self.model = model
        self.device = device
        self.limits = limits
        self.tables = tables  # the KV pool and each row's block table (kv_tables.py)
        self._admitted = 0  # admissions so far: a row's order
        self.preempted = 0  # rows preempted when the pool was full (cumulative)
        self._pool_ops: list[Callable[[], Any]] = []  # pins from other threads, run by the batching thread
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
            slot.tokens = list(slot.request.prompt_token_ids)
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

    def with_pool(self, op: Callable[[BlockTables], Any]) -> None:
        """Run op on the block tables from the batching thread, which owns the pool (pins from sessions)."""
        with self._cond:
            self._pool_ops.append(lambda: op(self.tables))
            self._cond.notify()

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
        if self.limits.cpu_threads:  # OpenMP keeps intra-op threads per OS thread: set them here
            torch.set_num_threads(self.limits.cpu_threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running and not self._pool_ops:
                        self._cond.wait()
                    if self._stopping:
                        return
                    ops, self._pool_ops = self._pool_ops, []
                    for op in ops:
                        op()
                    newcomers = self._admit()
                try:
                    self._ready(newcomers)
                    self._drop([s.cancel is None for s in self._running])
                    self._step([s for s in self._running if s.pending == 1], budget=None)
                    self._step([s for s in self._running if s.pending > 1], budget=self.limits.prefill_tokens)
                    self._drop([s.finish is None for s in self._running])
                except Exception as exc:
                    log.exception("batch step failed; ending %d requests", len(self._running))
                    for slot in self._running:
                        if slot.finish is None:
                            self._fail(slot, exc)
                    self._drop([False] * len(self._running))

    def _admit(self) -> list[Slot]:
        """Move waiting requests to the running rows (caller holds the lock) while batch slots and free
        blocks allow; each starts from the cached blocks of its longest known prefix."""
        for slot in [s for s in self._waiting if s.cancel is not None]:  # aborted while queued
            self._waiting.remove(slot)
            self._finish(slot, EngineStep(token_ids=[], finish="abort"))
        taken: list[Slot] = []
        while self._waiting and len(self._running) < self.limits.max_batch_size:
            slot = self._waiting[0]
            first = slot.pending if self._whole(slot) else min(slot.pending, self.limits.prefill_tokens)
            if self._running and self.tables.pool.available() < self.tables.blocks_for(first) + 1:
                break  # running rows hold the pool: wait for one to finish (or be preempted)
            placed = self._place_adapter(slot)
            if placed is None:  # every LoRA slot is busy with running rows: wait for one to free
                break
            self._waiting.popleft()
            if not placed:
                continue
            self.tables.start(slot, reuse=not self._whole(slot))
            self._admitted += 1
            slot.order = self._admitted
            self._running.append(slot)
            if slot.sampler is None:
                taken.append(slot)
        return taken

    @staticmethod
    def _whole(slot: Slot) -> bool:
        """Prompt logprobs need logits at every prompt position: such a prompt is fed whole, unshared."""
        return bool(slot.request.sampling.prompt_logprobs) and slot.generated == 0

    def _place_adapter(self, slot: Slot) -> bool | None:
        """Give a request its adapter's LoRA slot: True when placed (or none wanted), False when it
        failed (the request has its error), None when it must wait for a slot."""
        name = slot.request.adapter
        if name is None or slot.lora_slot is not None:  # none wanted, or kept while preempted
            return True
        try:
            if self.lora is None:
                raise GenerationFailed(f"adapter '{name}' not found: LoRA is not enabled")
            slot.lora_slot, slot.salt = self.lora.place(name), self.lora.salt(name)
        except Exception as exc:  # noqa: BLE001 - removed meanwhile, or unreadable: this request only
            self._fail(slot, exc)
            return False
        return None if slot.lora_slot is None else True

    def _drop(self, keep: list[bool]) -> None:
        """Remove rows whose keep is False (aborting cancelled ones) and free their blocks."""
        if all(keep):
            return
        for slot, kept in zip(self._running, keep, strict=True):
            if not kept:
                if slot.finish is None:
                    self._finish(slot, EngineStep(token_ids=[], finish=slot.cancel or "abort"))
                self.tables.free(slot)
        with self._cond:
            self._running = [s for s, k in zip(self._running, keep, strict=True) if k]

    def _ready(self, newcomers: list[Slot]) -> None:
        """Build the newcomers' samplers; a request whose values the sampler rejects fails alone."""
        for slot in newcomers:
            try:
                make_sampler(slot, self.limits.vocab_size, self.device)
            except Exception as exc:  # noqa: BLE001 - one request's bad values fail that request only
                self._fail(slot, exc)

    def _step(self, rows: list[Slot], budget: int | None) -> None:
        """One forward: every row feeds its pending tokens (prefill rows up to `budget` in all, in
        chunks); rows whose tokens are then all computed sample their next token."""
        plan: list[tuple[Slot, int]] = []
        left = budget
        for slot in sorted(rows, key=lambda s: s.order):
            if slot.finish is not None or slot not in self._running:  # ended, or preempted for an older row
                continue
            take = slot.pending if left is None or self._whole(slot) else min(slot.pending, left)
            if take <= 0:
                break
            if not self._room(slot, slot.computed + take):
                continue
            plan.append((slot, take))
            if left is not None:
                left -= take
        if not plan:
            return
        if self.lora is not None:  # rows with an adapter first: LoRA then works on a leading slice (lora_layers.py)
            plan.sort(key=lambda p: p[0].lora_slot is None)
            self.lora.set_rows([s.lora_slot for s, _ in plan])
        feeds = [RowFeed(s.blocks, s.computed, s.tokens[s.computed:s.computed + n]) for s, n in plan]
        want_prompt = [self._whole(s) for s, _ in plan]
        logits = forward(self.model, self.tables.pool, feeds, any(want_prompt))
        done: list[int] = []
        for i, (slot, take) in enumerate(plan):
            self.tables.commit(slot, take)
            if slot.pending == 0:
                done.append(i)
        if not done:
            return
        last = logits[done, -1, :] if any(want_prompt) else logits[done]
        for i, choice in zip(done, sample(last, [plan[i][0].sampler for i in done]), strict=True):
            slot = plan[i][0]
            lp = prompt_logprobs(logits[i], slot.request.prompt_token_ids) if want_prompt[i] else None
            self._advance(slot, choice, lp)

    def _room(self, slot: Slot, tokens: int) -> bool:
        """Blocks for `tokens` tokens of this row, preempting the newest rows while the pool is full.

        False when this row itself was preempted (or, alone in a pool too small for it, finished)."""
        while not self.tables.reserve(slot, tokens):
            if any(s.finish is not None for s in self._running):  # rows that ended this iteration: free them
                self._drop([s.finish is None for s in self._running])
                continue
            victim = max(self._running, key=lambda s: s.order)
            if victim is slot and len(self._running) == 1:  # no other row holds blocks: it cannot grow
                self._finish(slot, EngineStep(token_ids=[], finish="length"))
                return False
            self._preempt(victim)
            if victim is slot:
                return False
        return True

    def _preempt(self, slot: Slot) -> None:
        """Free a running row's blocks and queue it first: it is recomputed (prompt and what it has
        generated, sharing any blocks still cached) when there is room again."""
        log.debug("KV pool full: preempting request %s", slot.request.request_id)
        self.tables.free(slot)
        self.preempted += 1
        with self._cond:
            self._running.remove(slot)
            self._waiting.appendleft(slot)

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
        if slot.request.session_id and slot.computed and slot.finish != "abort":
            # A SageMaker session's conversation so far stays cached for its next turn (until close_session).
            self.tables.pin(f"session:{slot.request.session_id}", slot.tokens[:slot.computed], slot.salt)
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
