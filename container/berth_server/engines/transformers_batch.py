"""One left-padded KV cache for all running rows: batched prefill, decode steps, merge, drop, trim."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class KVBatch:
    """Rows of a DynamicCache, left-padded to a common length, with the matching attention mask.

    Every layer is a plain (full) DynamicLayer so rows can be padded, concatenated and selected
    along the batch dimension; the model builds its causal/sliding masks from the 2D mask.
    """

    def __init__(self, model: Any, cache: DynamicCache | None = None, mask: torch.Tensor | None = None):
        self.model = model
        self.cache = cache
        self.mask = mask  # long [B, S]: 1 where the cache holds a real token

    @property
    def size(self) -> int:
        """Number of rows."""
        return 0 if self.mask is None else int(self.mask.shape[0])

    @classmethod
    def prefill(
        cls, model: Any, prompts: list[list[int]], device: torch.device, all_logits: bool
    ) -> tuple[KVBatch, torch.Tensor]:
        """Run the prompts as one left-padded batch; return their batch and logits [B, L or 1, V]."""
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=True, **_keep(model, 0 if all_logits else 1),
        )
        return cls(model, out.past_key_values, mask), out.logits

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]; return the next-token logits [B, V]."""
        assert self.mask is not None and self.cache is not None
        positions = self.mask.sum(-1, keepdim=True)
        ones = torch.ones((self.size, 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=-1)
        out = self.model(
            input_ids=tokens.unsqueeze(1), attention_mask=self.mask, position_ids=positions,
            past_key_values=self.cache, use_cache=True, **_keep(self.model, 1),
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def extend(self, other: KVBatch) -> None:
        """Append other's rows after ours, left-padding the shorter side to a common length."""
        if other.size == 0:
            return
        if self.size == 0 or self.cache is None or self.mask is None:
            self.cache, self.mask = other.cache, other.mask
            return
        assert other.cache is not None and other.mask is not None
        width = max(self.mask.shape[1], other.mask.shape[1])
        mine_layers: list[Any] = list(self.cache.layers)
        their_layers: list[Any] = list(other.cache.layers)
        for mine, theirs in zip(mine_layers, their_layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
            mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])
        self.mask = torch.cat([_pad_left(self.mask, width, -1), _pad_left(other.mask, width, -1)])

    def select(self, keep: list[int]) -> None:
        """Keep only these rows (in this order), then drop columns that are padding in every row."""
        if not keep:
            self.cache, self.mask = None, None
            return
        assert self.cache is not None and self.mask is not None
        if len(keep) != self.size:
            index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask.index_select(0, index)
        used = self.mask.any(dim=0)
        first = int(used.int().argmax())
        if first > 0:
            layers: list[Any] = list(self.cache.layers)
            for layer in layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            self.mask = self.mask[:, first:]


def _keep(model: Any, n: int) -> dict[str, int]:
    """logits_to_keep=n when the model's forward takes it (older remote code does not)."""
    return {"logits_to_keep": n} if _takes_logits_to_keep(model.__class__) else {}


@functools.cache
def _takes_logits_to_keep(model_type: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad t on the left of dimension dim (-1 or -2) up to width."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = (missing, 0) if dim == -1 else (0, 0, missing, 0)
    return F.pad(t, pad)
