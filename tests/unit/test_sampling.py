"""Per-request sampling (engines/sampling.py) on hand-made logits: warpers, penalties, seeds, logprobs."""

from __future__ import annotations

import math

import pytest
import torch
from berth_server.canonical import SamplingParams
from berth_server.engines.sampling import Choice, RowSampler, sample, validate_sampling
from berth_server.errors import InvalidRequest

V = 8
CPU = torch.device("cpu")


def _row(prompt: tuple[int, ...] = (), **params: object) -> RowSampler:
    return RowSampler(SamplingParams(**params), V, CPU, prompt)  # type: ignore[arg-type]


def _tokens(logits: torch.Tensor, rows: list[RowSampler]) -> list[int]:
    out = sample(logits, rows)
    assert all(isinstance(c, Choice) for c in out)
    return [c.token for c in out]  # type: ignore[union-attr]


def _flat() -> torch.Tensor:
    return torch.tensor([[3.0, 2.9, 2.8, 0.0, 0.0, 0.0, 0.0, 0.0]])


def test_greedy_takes_argmax_and_temperature_zero_is_greedy() -> None:
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0, 0, 0, 0, 0], [4.0, 1.0, 0, 0, 0, 0, 0, 0]])
    assert _tokens(logits, [_row(greedy=True), _row(temperature=0.0)]) == [2, 0]


def test_top_k_one_and_tiny_top_p_always_pick_the_best() -> None:
    rows = [_row(top_k=1, seed=s) for s in range(10)] + [_row(top_p=0.01, seed=s) for s in range(10)]
    assert _tokens(_flat().repeat(len(rows), 1), rows) == [0] * len(rows)


def test_top_k_three_never_leaves_the_top_three() -> None:
    rows = [_row(top_k=3, temperature=5.0, seed=s) for s in range(40)]
    assert set(_tokens(_flat().repeat(40, 1), rows)) <= {0, 1, 2}


def test_min_p_and_typical_p_filter_unlikely_tokens() -> None:
    rows = [_row(min_p=0.5, temperature=3.0, seed=s) for s in range(30)]
    assert set(_tokens(_flat().repeat(30, 1), rows)) <= {0, 1, 2}
    rows = [_row(typical_p=0.2, seed=s) for s in range(10)]
    assert len(set(_tokens(_flat().repeat(10, 1), rows))) <= 2


def test_repetition_penalty_demotes_prompt_and_generated_tokens() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0, 0, 0, 0, 0]])
    assert _tokens(logits, [_row(prompt=(0,), greedy=True, repetition_penalty=2.0)]) == [1]
    row = _row(greedy=True, repetition_penalty=4.0)
    row.observe(1)
    row.observe(0)
    assert _tokens(logits, [row]) == [2]


def test_frequency_and_presence_penalties_count_generated_tokens() -> None:
    logits = torch.tensor([[3.0, 2.5, 0, 0, 0, 0, 0, 0]])
    row = _row(greedy=True, frequency_penalty=0.3)
    row.observe(0)
    assert _tokens(logits, [row]) == [0]  # 3.0 - 0.3 > 2.5
    row.observe(0)
    assert _tokens(logits, [row]) == [1]  # 3.0 - 0.6 < 2.5
    row = _row(greedy=True, presence_penalty=1.0)
    row.observe(0)
    assert _tokens(logits, [row]) == [1]


def test_seeded_rows_reproduce_whatever_else_is_in_the_batch() -> None:
    logits = torch.zeros((1, V))
    alone = _tokens(logits, [_row(seed=42)])
    seeded = _row(seed=42)
    noisy = [_row(), _row(seed=7), _row(greedy=True)]
    mixed = _tokens(logits.repeat(4, 1), [noisy[0], seeded, noisy[1], noisy[2]])
    assert mixed[1] == alone[0]
    first, second = _row(seed=3), _row(seed=3)
    draws = [_tokens(logits, [first])[0] for _ in range(20)]
    assert draws == [_tokens(logits, [second])[0] for _ in range(20)]
    assert len(set(draws)) > 1


def test_logprobs_come_from_raw_logits_with_top_n() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0, 0, 0, 0, 0]])
    (choice,) = sample(logits, [_row(greedy=True, temperature=0.1, repetition_penalty=3.0, prompt=(1,),
                                     logprobs=2)])
    assert isinstance(choice, Choice)
    expected = torch.log_softmax(logits[0], -1)
    assert choice.token == 2  # the penalty moved the choice...
    assert choice.logprob == pytest.approx(float(expected[2]))  # ...not the reported logprob
    assert choice.top is not None and [t for t, _ in choice.top] == [1, 2]
    assert choice.top[0][1] == pytest.approx(float(expected[1]))
    (plain,) = sample(logits, [_row(greedy=True, logprobs=0)])
    assert isinstance(plain, Choice) and plain.top == [] and math.isfinite(plain.logprob or 0.0)
    (none,) = sample(logits, [_row(greedy=True)])
    assert isinstance(none, Choice) and none.logprob is None and none.top is None


def test_banned_tokens_are_never_chosen() -> None:
    row = _row(greedy=True)
    row.banned = [1]
    assert _tokens(torch.tensor([[1.0, 3.0, 2.0, 0, 0, 0, 0, 0]]), [row]) == [2]


def test_knobs_near_zero_take_their_limit_instead_of_failing() -> None:
    # Found by schemathesis: repetition_penalty=2.2e-309 made x / p overflow to +inf, then NaN: a 500.
    logits = torch.tensor([[3.0, 2.0, 1.0, 0, 0, 0, 0, 0]])
    tiny_penalty = [_row(prompt=(2,), repetition_penalty=2.2e-309, seed=s) for s in range(5)]
    assert _tokens(logits.repeat(5, 1), tiny_penalty) == [2] * 5  # the seen token wins outright
    cold = [_row(temperature=1e-40, seed=s) for s in range(5)]  # x / t overflows float32
    assert _tokens(logits.repeat(5, 1), cold) == [0] * 5  # the limit of temperature -> 0 is the argmax
    # Found by schemathesis too: 2.2e-308 is 0 in float32, and x / 0 gave NaN probabilities: a 500.
    denormal = [_row(temperature=2.2250738585072014e-308, seed=s) for s in range(5)]
    assert _tokens(logits.repeat(5, 1), denormal) == [0] * 5
    assert SamplingParams(temperature=9e-6).takes_argmax and not SamplingParams(temperature=1e-4).takes_argmax
    both = _row(prompt=(1, 2), repetition_penalty=1e-300, temperature=1e-40, seed=3)
    assert _tokens(logits, [both]) in ([1], [2])


def test_a_row_with_broken_logits_fails_alone() -> None:
    logits = torch.tensor([[float("nan")] * V, [0.0, 5.0, 0, 0, 0, 0, 0, 0]])
    bad, good = sample(logits, [_row(seed=1), _row(seed=1)])
    assert isinstance(bad, Exception)
    assert isinstance(good, Choice)


@pytest.mark.parametrize(
    "params",
    [{"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"min_p": 1.5}, {"typical_p": 0.0},
     {"repetition_penalty": 0.0}, {"frequency_penalty": 3.0}, {"logprobs": V + 1},
     {"stop_token_ids": (V,)}, {"temperature": float("nan")}],
)
def test_validation_names_the_bad_value(params: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_sampling(SamplingParams(**params), V)  # type: ignore[arg-type]
    assert info.value.param == next(iter(params))
