"""One request inside the transformers scheduler: its slot, and what a new token does to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from berth_server.engines.base import EngineFinish, EngineRequest, EngineStep
from berth_server.engines.sampling import Choice, RowSampler

Emit = Callable[[EngineStep | BaseException], None]


@dataclass(eq=False)
class Slot:
    """One request: what it asked for, where its steps go, and how far it has got."""

    request: EngineRequest
    emit: Emit
    stop_ids: frozenset[int]
    sampler: Any = None  # sampling.RowSampler, built on the scheduler thread
    generated: int = 0
    last_token: int = 0
    finish: EngineFinish | None = None
    cancel: EngineFinish | None = None  # set from any thread: 'abort' emits a final step
    silent: bool = False  # the consumer has gone: emit nothing more
    lora_slot: int | None = None  # the LoRA bank slot of the request's adapter while it runs
    # Its sequence in the KV pool (kv_tables.py): prompt then generated tokens, block table, progress.
    tokens: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    hashes: list[bytes] = field(default_factory=list)
    order: int = 0  # admission order: the newest running row is preempted first
    salt: str = ""  # what its cached keys depend on besides the tokens: the adapter (LoraBank.salt)

    @property
    def pending(self) -> int:
        """Tokens known but not yet computed into the cache."""
        return len(self.tokens) - self.computed

    def send(self, item: EngineStep | BaseException) -> None:
        """Deliver to the request's queue; a closed event loop only loses this request's messages."""
        if self.silent:
            return
        try:
            self.emit(item)
        except RuntimeError:
            self.silent = True
            self.cancel = "abort"


def make_sampler(slot: Slot, vocab_size: int, device: torch.device) -> None:
    """Build the slot's sampler (raises on values the sampler rejects)."""
    request = slot.request
    slot.sampler = RowSampler(request.sampling, vocab_size, device, request.prompt_token_ids,
                              grammar=request.grammar, bad_words_ids=request.bad_words_ids)
    ban_stops(slot)


def ban_stops(slot: Slot) -> None:
    """Mask stop tokens while min_new_tokens is unmet (as HF's MinNewTokensLength processor does)."""
    sampler: RowSampler = slot.sampler
    if slot.generated < slot.request.sampling.min_new_tokens:
        sampler.banned = [t for t in slot.stop_ids if 0 <= t < sampler.vocab_size]
    else:
        sampler.banned = []


def next_step(
    slot: Slot, choice: Choice, max_model_len: int, prompt_logprobs: list[float | None] | None = None,
) -> EngineStep:
    """Record a row's new token and return its step (finish set when the row is done)."""
    token = choice.token
    slot.generated += 1
    slot.last_token = token
    slot.tokens.append(token)
    slot.sampler.observe(token)
    ban_stops(slot)
    finish: EngineFinish | None = None
    if token in slot.stop_ids:
        finish = "eos"
    elif slot.generated >= slot.request.max_new_tokens or (
        len(slot.request.prompt_token_ids) + slot.generated >= max_model_len
    ):
        finish = "length"
    step = EngineStep(token_ids=[token], finish=finish, prompt_logprobs=prompt_logprobs)
    if choice.logprob is not None:
        step.logprobs = [choice.logprob]
        step.top_logprobs = [choice.top or []]
    return step


def prompt_logprobs(logits: torch.Tensor, prompt: list[int]) -> list[float | None]:
    """Logprob of each prompt token given the ones before it (None for the first); logits are left-padded."""
    n = len(prompt)
    rows = logits[logits.shape[0] - n: logits.shape[0] - 1].float()
    if n < 2:
        return [None]
    targets = torch.tensor(prompt[1:], dtype=torch.long, device=rows.device)
    values = torch.log_softmax(rows, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return [None, *values.tolist()]
