"""Per-request sampling for a batch of rows: penalties, warpers, seeded draws and logprobs (torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from berth_server.canonical import SamplingParams
from berth_server.errors import InvalidRequest

_NEG_INF = float("-inf")
_MAX_LOGIT = torch.finfo(torch.float32).max


def validate_sampling(params: SamplingParams, vocab_size: int) -> None:
    """Raise InvalidRequest naming the first sampling value this engine cannot use."""
    checks: list[tuple[bool, str, str]] = [
        (params.temperature >= 0.0, "temperature", "must be >= 0"),
        (0.0 < params.top_p <= 1.0, "top_p", "must be in (0, 1]"),
        (params.top_k >= 0, "top_k", "must be >= 0"),
        (0.0 <= params.min_p <= 1.0, "min_p", "must be in [0, 1]"),
        (0.0 < params.typical_p <= 1.0, "typical_p", "must be in (0, 1]"),
        (params.repetition_penalty > 0.0, "repetition_penalty", "must be > 0"),
        (-2.0 <= params.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]"),
        (-2.0 <= params.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]"),
        (params.min_new_tokens >= 0, "min_new_tokens", "must be >= 0"),
        (params.logprobs is None or 0 <= params.logprobs <= vocab_size, "logprobs",
         f"must be in [0, {vocab_size}]"),
        (all(0 <= t < vocab_size for t in params.stop_token_ids), "stop_token_ids",
         f"ids must be in [0, {vocab_size})"),
        (all(0 <= t < vocab_size for t, _ in params.logit_bias), "logit_bias",
         f"token ids must be in [0, {vocab_size})"),
        (all(math.isfinite(b) for _, b in params.logit_bias), "logit_bias", "biases must be finite numbers"),
        (params.allowed_token_ids is None or (bool(params.allowed_token_ids) and all(
            0 <= t < vocab_size for t in params.allowed_token_ids)), "allowed_token_ids",
         f"must be a non-empty list of ids in [0, {vocab_size})"),
    ]
    for ok, name, why in checks:
        if not ok:
            raise InvalidRequest(f"{name}={getattr(params, name)!r} {why}", param=name)
    for name in ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty"):
        value = getattr(params, name)
        if not math.isfinite(value):  # NaN passes the range checks above
            raise InvalidRequest(f"{name}={value!r} is not a finite number", param=name)


@dataclass(eq=False)
class RowSampler:
    """Sampling state of one request: its knobs, its RNG and what it has seen so far."""

    params: SamplingParams
    vocab_size: int
    device: torch.device
    prompt_ids: Sequence[int] = ()
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # bool [V]: prompt+output ids, for repetition_penalty
    counts: torch.Tensor | None = None  # float [V]: output ids, for frequency/presence penalties
    banned: list[int] = field(default_factory=list)  # ids masked while min_new_tokens is unmet
    grammar: Any = None  # an xgrammar CompiledGrammar (EngineRequest.grammar)
    bad_words_ids: Sequence[Sequence[int]] = ()
    constraint: Any = None  # constraints.RowConstraint, built from grammar
    bias: torch.Tensor | None = None  # float [V]: logit_bias, -inf outside allowed_token_ids
    output: list[int] = field(default_factory=list)  # generated ids, kept only for bad words

    def __post_init__(self) -> None:
        p = self.params
        if self.grammar is not None:
            from berth_server.engines.constraints import RowConstraint

            self.constraint = RowConstraint(self.grammar, self.vocab_size)
        if p.logit_bias or p.allowed_token_ids is not None:
            self.bias = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)
            if p.allowed_token_ids is not None:
                self.bias.fill_(_NEG_INF)
                self.bias[torch.tensor(list(p.allowed_token_ids), device=self.device)] = 0.0
            for token, value in p.logit_bias:
                self.bias[token] += value
        if p.seed is not None:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(p.seed)
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            ids = [t for t in self.prompt_ids if 0 <= t < self.vocab_size]
            if ids:
                self.seen[torch.tensor(ids, device=self.device)] = True
        if p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            self.counts = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)

    @property
    def greedy(self) -> bool:
        """Whether this row takes the argmax (a temperature near 0 counts as greedy, never divides by it)."""
        return self.params.takes_argmax

    def observe(self, token: int) -> None:
        """Record a generated token for the penalties, bad words and the grammar."""
        if self.constraint is not None:
            self.constraint.accept(token)
        if self.bad_words_ids:
            self.output.append(token)
        if 0 <= token < self.vocab_size:
            if self.seen is not None:
                self.seen[token] = True
            if self.counts is not None:
                self.counts[token] += 1.0


@dataclass
class Choice:
    """The sampled token of one row, with its logprob and top alternatives when asked."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def _penalise(logits: torch.Tensor, rows: Sequence[RowSampler]) -> None:
    """Apply repetition (HF), frequency/presence (OpenAI) penalties and min-token bans in place."""
    for i, row in enumerate(rows):
        if row.seen is not None:
            p = row.params.repetition_penalty
            x = logits[i]
            # A penalty near 0 (say 1e-300) would push x / p past float32: keep it finite, as strongly preferred.
            logits[i] = torch.where(row.seen, torch.where(x < 0, x * p, (x / p).clamp(max=_MAX_LOGIT)), x)
        if row.counts is not None:
            c = row.counts
            logits[i] -= row.params.frequency_penalty * c + row.params.presence_penalty * (c > 0).float()
        if row.banned:
            logits[i, row.banned] = _NEG_INF
        if row.bias is not None:
            logits[i] += row.bias
        if row.bad_words_ids:
            _ban_bad_words(logits, i, row)
        if row.constraint is not None:
            row.constraint.mask(logits[i:i + 1])


def _ban_bad_words(logits: torch.Tensor, i: int, row: RowSampler) -> None:
    """Forbid the last token of each bad word whose other tokens the row has just generated (vLLM's rule)."""
    banned = [
        word[-1] for word in row.bad_words_ids
        if word and 0 <= word[-1] < row.vocab_size
        and (len(word) == 1 or list(word[:-1]) == row.output[len(row.output) - len(word) + 1:])
    ]
    if banned:
        logits[i, banned] = _NEG_INF


def _typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical filtering of one row (HF TypicalLogitsWarper, keeping at least one token)."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(torch.nan_to_num(logp) * p).sum()
    shifted = (-logp - entropy).abs()
    order = shifted.argsort()
    cum = p[order].cumsum(-1)
    last = int((cum < mass).sum().clamp(max=logits.numel() - 1))
    remove = torch.ones_like(logits, dtype=torch.bool)
    remove[order[: last + 1]] = False
    return logits.masked_fill(remove, _NEG_INF)


def _warp(logits: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p and typical-p, vectorised across the sampling rows."""
    device = logits.device
    temps = torch.tensor([r.params.temperature for r in rows], device=device, dtype=logits.dtype).unsqueeze(1)
    scaled = logits / temps
    overflowed = scaled.isposinf().any(dim=-1, keepdim=True)
    if bool(overflowed.any()):
        # A temperature near 0 overflows x / t, and softmax of several +inf is NaN. Shifting by the row's
        # max first keeps every value <= 0, so the limit comes out right: all the mass on the argmax.
        shifted = (logits - logits.max(dim=-1, keepdim=True).values) / temps
        scaled = torch.where(overflowed, shifted, scaled)
    logits = scaled
    vocab = logits.shape[-1]
    ks = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_ps = [r.params.top_p for r in rows]
    if any(k < vocab for k in ks) or any(p < 1.0 for p in top_ps):
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        positions = torch.arange(vocab, device=device).unsqueeze(0)
        remove = positions >= torch.tensor(ks, device=device).unsqueeze(1)
        probs = sorted_logits.masked_fill(remove, _NEG_INF).softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        remove |= before > torch.tensor(top_ps, device=device, dtype=probs.dtype).unsqueeze(1)
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), _NEG_INF)
    min_ps = [r.params.min_p for r in rows]
    if any(m > 0.0 for m in min_ps):
        probs = logits.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_ps, device=device).unsqueeze(1)
        logits = logits.masked_fill(probs < floor, _NEG_INF)
    for i, row in enumerate(rows):
        if row.params.typical_p < 1.0:
            logits[i] = _typical(logits[i], row.params.typical_p)
    return logits


def _draw(probs: torch.Tensor, rows: Sequence[RowSampler]) -> list[int | Exception]:
    """One draw per row; a seeded row uses its own generator so the batch around it does not matter."""
    out: list[int | Exception] = []
    for i, row in enumerate(rows):
        p = probs[i]
        if not bool(torch.isfinite(p).all()) or float(p.sum()) <= 0.0:
            out.append(ValueError("sampling produced invalid probabilities"))
            continue
        out.append(int(torch.multinomial(p, 1, generator=row.generator)))
    return out


def sample(raw_logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Choice | Exception]:
    """Choose one token for each row of raw_logits [B, V]; a failing row gets its exception instead.

    Logprobs come from log_softmax of the raw logits (before penalties and temperature), as vLLM does.
    """
    logits = raw_logits.float()
    vocab = min(logits.shape[-1], rows[0].vocab_size) if rows else logits.shape[-1]
    logits = logits[:, :vocab].clone()  # checkpoints may pad the embedding past the tokenizer
    _penalise(logits, rows)
    tokens: list[int | Exception] = [0] * len(rows)
    greedy = [i for i, r in enumerate(rows) if r.greedy]
    if greedy:
        picked = logits[greedy].argmax(dim=-1).tolist()
        for i, t in zip(greedy, picked, strict=True):
            tokens[i] = int(t)
    sampled = [i for i, r in enumerate(rows) if not r.greedy]
    if sampled:
        sub_rows = [rows[i] for i in sampled]
        probs = _warp(logits[sampled], sub_rows).softmax(dim=-1)
        for i, t in zip(sampled, _draw(probs, sub_rows), strict=True):
            tokens[i] = t
    return _with_logprobs(raw_logits[:, :vocab], rows, tokens)


def _with_logprobs(
    raw: torch.Tensor, rows: Sequence[RowSampler], tokens: list[int | Exception]
) -> list[Choice | Exception]:
    """Attach logprob and top-N alternatives to the rows that asked for them."""
    out: list[Choice | Exception] = []
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None and isinstance(tokens[i], int)]
    logp = torch.log_softmax(raw[wanted].float(), dim=-1) if wanted else None
    where = {i: j for j, i in enumerate(wanted)}
    for i, row in enumerate(rows):
        token = tokens[i]
        if isinstance(token, Exception):
            out.append(token)
            continue
        choice = Choice(token)
        if logp is not None and i in where:
            lp = logp[where[i]]
            choice.logprob = float(lp[token])
            n = row.params.logprobs or 0
            if n > 0:
                values, ids = lp.topk(n)
                choice.top = list(zip(ids.tolist(), values.tolist(), strict=True))
            else:
                choice.top = []
        out.append(choice)
    return out
