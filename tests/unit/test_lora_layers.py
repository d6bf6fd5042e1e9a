"""Fused LoRA matmuls: siblings sharing an input compute x @ A once, and rows without an adapter skip the path."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from berth_server.engines.lora_layers import RowLoraLinear, adapt


class Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(8, n, bias=False) for n in (8, 4, 4))
        self.o_proj = torch.nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x), self.o_proj(x)], dim=-1)


def _adapted(seed: int, rows: int, tokens: int, module: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor,
                                                                       Any, dict[str, RowLoraLinear]]:
    """An attention block, an input, its output before adapting, a stand-in bank, and `module`'s adapted group."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(Attention())
    x = torch.randn(rows, tokens, 8)
    base = model(x)
    bank: Any = SimpleNamespace(row_scale=None, adapted_rows=None)
    return model, x, base, bank, adapt(model, module, bank, width=2)


def test_siblings_share_one_input_matmul_and_base_rows_are_untouched() -> None:
    model, x, base, bank, layers = _adapted(0, 3, 2, "0.v_proj")
    assert sorted(layers) == ["0.k_proj", "0.q_proj", "0.v_proj"]  # o_proj reads another input: not grouped
    assert all(isinstance(getattr(model[0], n), RowLoraLinear) for n in ("q_proj", "k_proj", "v_proj"))
    shared = layers["0.q_proj"].shared
    assert shared is layers["0.k_proj"].shared and shared.a_cat.shape == (8, 6)
    for layer in layers.values():
        layer.a_cat.normal_()
        layer.b_cat.normal_()
    # Rows 0 and 2 have an adapter (scale 0.5), row 1 is the base model.
    bank.row_scale = torch.full((2, 1, 2), 0.5)
    bank.adapted_rows = torch.tensor([0, 2])
    scale, rows = bank.row_scale, bank.adapted_rows
    first = shared.low(x, scale, rows)  # q computes x[rows] @ [A_q | A_k | A_v] once ...
    assert shared.low(x, scale, rows) is first and shared.low(x, scale, rows) is first  # ... k and v reuse it
    assert first.shape == (2, 2, 6) and shared.low(x, scale, rows) is not first  # the next input computes again
    shared.low(torch.zeros(3, 2, 8), scale, rows)  # a different input: never a stale product
    assert shared.low(x, scale, rows) is not first
    shared._x = shared._low = None
    shared._left = 0
    out = model(x)
    assert torch.equal(out[1], base[1])  # the base row: exactly the base output
    for row in (0, 2):
        expected = []
        for name in ("q_proj", "k_proj", "v_proj"):
            layer = layers[f"0.{name}"]
            expected.append(layer.base(x[row]) + 0.5 * (x[row] @ layer.a_cat) @ layer.b_cat)
        expected.append(base[row][..., 16:])
        torch.testing.assert_close(out[row], torch.cat(expected, dim=-1))


def test_adapted_rows_leading_the_batch_are_a_view_and_match_the_gathered_path() -> None:
    model, x, base, bank, layers = _adapted(1, 4, 3, "0.q_proj")
    for layer in layers.values():
        layer.a_cat.normal_()
        layer.b_cat.normal_()
    bank.row_scale = torch.tensor([0.5, 2.0]).view(2, 1, 1).expand(2, 1, 2).contiguous()
    bank.adapted_rows = slice(0, 2)  # rows 0 and 1 have an adapter, 2 and 3 are the base model
    leading = model(x)
    bank.adapted_rows = torch.tensor([0, 1])  # the same rows by index: gathered and scattered
    gathered = model(x)
    assert torch.equal(leading[2:], base[2:])  # base rows untouched
    torch.testing.assert_close(leading, gathered)
    for row, scale in ((0, 0.5), (1, 2.0)):
        layer = layers["0.k_proj"]
        expected = layer.base(x[row]) + scale * (x[row] @ layer.a_cat) @ layer.b_cat
        torch.testing.assert_close(leading[row][..., 8:12], expected)
