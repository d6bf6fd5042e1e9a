"""The adapted Linear layers of the LoRA bank, with fused adapter matmuls for projections sharing an input.

Every adapted Linear adds ((x @ A_cat) * scale) @ B_cat to its base output (lora_bank.py explains
the slots). Projections that read the same input (q/k/v of an attention, gate/up of an MLP) keep
their A_cat side by side in one tensor: the first of them to run computes x @ [A_q | A_k | A_v]
once and the others take their columns, so a layer pays one input matmul instead of three. Rows
without an adapter skip the adapter path: the low-rank product is computed for the adapted rows
only and added back to their outputs. The scheduler puts the adapted rows first in the batch, so
they are a leading slice (a view: no gather, and the delta is added in place with one addmm);
rows in any other order are gathered and scattered by index.
"""

from __future__ import annotations

from typing import Any

import torch

# Which rows of a batch have an adapter: None (all of them), a leading slice, or their indices.
AdaptedRows = slice | torch.Tensor | None

# Sibling projections that read the same input tensor in transformers' attention and MLP modules.
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedInput:
    """The A matrices of sibling projections, side by side, and the last input's low-rank product."""

    def __init__(self, in_features: int, members: int, width: int, dtype: torch.dtype, device: torch.device):
        self.a_cat = torch.zeros((in_features, members * width), dtype=dtype, device=device)
        self.members, self.width = members, width
        self._x: torch.Tensor | None = None
        self._low: torch.Tensor | None = None
        self._left = 0  # members still to take their columns of _low

    def low(self, x: torch.Tensor, scale: torch.Tensor, rows: AdaptedRows) -> torch.Tensor:
        """(x[rows] @ A_all) scaled per row, [rows, T, members*width]; computed once per input tensor."""
        if self._x is x and self._low is not None and self._left > 0:
            low = self._low
            self._left -= 1
            if self._left == 0:
                self._x = self._low = None
            return low
        part = _rows_of(x, rows)
        low = part @ self.a_cat
        shape = low.shape
        low.view(*shape[:-1], self.members, self.width).mul_(scale.unsqueeze(-2))  # in place: low is our own
        if self.members > 1:
            self._x, self._low, self._left = x, low, self.members - 1
        return low


def _rows_of(x: torch.Tensor, rows: AdaptedRows) -> torch.Tensor:
    """The adapted rows of x: itself, a view of the leading ones, or a gathered copy."""
    if rows is None:
        return x
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


class RowLoraLinear(torch.nn.Module):
    """A Linear plus the per-row LoRA delta of whichever slot each row selects."""

    def __init__(self, base: torch.nn.Linear, bank: Any, shared: SharedInput, index: int):
        super().__init__()
        self.base = base
        self.bank = bank
        self.shared, self.index = shared, index
        width = shared.width
        self.b_cat = torch.zeros((width, base.out_features), dtype=base.weight.dtype, device=base.weight.device)

    @property
    def a_cat(self) -> torch.Tensor:
        """This projection's columns of the shared A (a view: writes land in the shared tensor)."""
        width = self.shared.width
        return self.shared.a_cat[:, self.index * width:(self.index + 1) * width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the adapted rows' low-rank delta when any row has an adapter."""
        out = self.base(x)
        scale = self.bank.row_scale  # [adapted rows, 1, S*R], set once per forward
        if scale is None:
            return out
        rows = self.bank.adapted_rows
        width = self.shared.width
        low = self.shared.low(x, scale, rows)[..., self.index * width:(self.index + 1) * width]
        if isinstance(rows, torch.Tensor):
            return out.index_add_(0, rows, low @ self.b_cat)
        target = out if rows is None else out[rows]  # a view: the sum lands in out
        target.view(-1, target.shape[-1]).addmm_(low.reshape(-1, width), self.b_cat)
        return out


def adapt(model: Any, module: str, bank: Any, width: int) -> dict[str, RowLoraLinear]:
    """Swap `module` (and the siblings that share its input, if any) for RowLoraLinears; returns them by path."""
    parent_path, _, attr = module.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    group = next((g for g in SHARED_INPUTS if attr in g), (attr,))
    names = [n for n in group if _plain_linear(getattr(parent, n, None), getattr(parent, attr))] or [attr]
    first: torch.nn.Linear = getattr(parent, names[0])
    shared = SharedInput(first.in_features, len(names), width, first.weight.dtype, first.weight.device)
    swapped: dict[str, RowLoraLinear] = {}
    for index, name in enumerate(names):
        layer = RowLoraLinear(getattr(parent, name), bank, shared, index)
        setattr(parent, name, layer)
        swapped[f"{parent_path}.{name}" if parent_path else name] = layer
    return swapped


def _plain_linear(candidate: Any, target: Any) -> bool:
    """A not-yet-adapted Linear reading the same width as the target."""
    return (isinstance(candidate, torch.nn.Linear) and isinstance(target, torch.nn.Linear)
            and candidate.in_features == target.in_features)
