"""One model forward over the block pool: rows with any past and any number of new tokens.

Each row's tokens (its computed past, then the new ones) are laid out right-aligned in a step
view of width W = max(past + new); the rest of the row is the null block, masked out by the 2D
attention mask. Because every row's real tokens are contiguous and end at the last column, the
model builds its own causal and sliding-window masks from that 2D mask exactly as it does for a
left-padded batch, so any attention the model itself implements (SDPA, eager with soft-capping,
MLA) runs unchanged. Each layer writes the new keys and values straight into their blocks, then
reads the step view back from the pool: one gather per layer, never a copy of the whole cache.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from berth_server.engines.kv_pool import KVPool, LayerShape


@dataclass
class RowFeed:
    """One row of a forward: its block table, how many of its tokens are computed, and the new ones."""

    blocks: Sequence[int]
    past: int
    tokens: Sequence[int]


class _StepIndex:
    """Where a step reads and writes: slot indices into the pool's flat tensors."""

    def __init__(self, rows: Sequence[RowFeed], block_size: int, device: torch.device):
        past = torch.tensor([r.past for r in rows], dtype=torch.long)
        new = torch.tensor([len(r.tokens) for r in rows], dtype=torch.long)
        total = past + new
        self.batch, self.width, self.query = len(rows), int(total.max()), int(new.max())
        width_blocks = max(len(r.blocks) for r in rows)
        table = torch.zeros((len(rows), width_blocks), dtype=torch.long)
        for i, row in enumerate(rows):
            table[i, :len(row.blocks)] = torch.tensor(list(row.blocks), dtype=torch.long)
        column = torch.arange(self.width).unsqueeze(0)
        index = column - (self.width - total).unsqueeze(1)  # the token each column holds; < 0 is padding
        real = index >= 0
        index = index.clamp(min=0)
        slots = table.gather(1, index // block_size) * block_size + index % block_size
        slots[~real] = 0
        self.read = slots.flatten().to(device)
        self.write = slots[real & (index >= past.unsqueeze(1))].to(device)
        self.mask = real.long().to(device)
        q = torch.arange(self.query).unsqueeze(0)
        self.new_real = (q >= (self.query - new).unsqueeze(1)).to(device)  # [B, Q]: columns with a new token
        self.positions = (q - (self.query - new).unsqueeze(1) + past.unsqueeze(1)).clamp(min=0).to(device)
        ids = torch.zeros((len(rows), self.query), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, self.query - len(row.tokens):] = torch.tensor(list(row.tokens), dtype=torch.long)
        self.ids = ids.to(device)


class _PoolLayer(DynamicLayer):
    """A cache layer whose storage is the pool: writes the new tokens, returns the step view."""

    def __init__(self, pool: KVPool, layer: int, step: _StepIndex):
        super().__init__()
        self.pool, self.layer, self.step = pool, layer, step
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.step.width - self.step.query

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step
        return (self._write_read(self.pool.keys[self.layer], key_states, step),
                self._write_read(self.pool.values[self.layer], value_states, step))

    @staticmethod
    def _write_read(store: torch.Tensor, states: torch.Tensor, step: _StepIndex) -> torch.Tensor:
        """Write the new tokens' states ([B, heads, Q, dim]) into their slots; return the step view [B, heads, W, dim].

        The view is a permutation of one contiguous [heads, B, W, dim] gather (kv_attention.py reads it so)."""
        new = states.permute(1, 0, 2, 3)[:, step.new_real]  # [heads, new tokens, dim], in slot order
        store.index_copy_(1, step.write, new.to(store.dtype))
        gathered = store.index_select(1, step.read).view(store.shape[0], step.batch, step.width, store.shape[2])
        return gathered.permute(1, 0, 2, 3)


def forward(model: Any, pool: KVPool, rows: Sequence[RowFeed], all_logits: bool) -> torch.Tensor:
    """Run the rows' new tokens through the model, caching their keys and values in the pool.

    Returns logits [B, V] of each row's last token, or [B, Q, V] (right-aligned) when all_logits."""
    device = pool.keys[0].device
    step = _StepIndex(rows, pool.block_size, device)
    cache = DynamicCache()
    cache.layers = [_PoolLayer(pool, i, step) for i in range(len(pool.keys))]
    out = model(input_ids=step.ids, attention_mask=step.mask, position_ids=step.positions,
                past_key_values=cache, use_cache=True, **_keep(model, 0 if all_logits else 1))
    return out.logits if all_logits else out.logits[:, -1, :]


def probe_shapes(model: Any, device: torch.device) -> list[LayerShape]:
    """What each layer caches per token, read from a two-token forward."""
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), past_key_values=cache, use_cache=True)
    layers: list[Any] = list(cache.layers)
    return [LayerShape(key=(int(layer.keys.shape[1]), int(layer.keys.shape[3])),
                       value=(int(layer.values.shape[1]), int(layer.values.shape[3]))) for layer in layers]


def _keep(model: Any, n: int) -> dict[str, int]:
    """logits_to_keep=n when the model's forward takes it (older remote code does not)."""
    return {"logits_to_keep": n} if _takes_logits_to_keep(model.__class__) else {}


@functools.cache
def _takes_logits_to_keep(model_type: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters
