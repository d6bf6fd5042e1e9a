"""The grouped SDPA attention equals transformers' own SDPA attention (which repeats each key/value head)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from berth_server.engines.kv_attention import grouped_sdpa_attention
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def _inputs(batch: int, heads: int, kv_heads: int, q_len: int, width: int, dim: int = 16
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 100 + q_len * 10 + width)
    query = torch.randn((batch, heads, q_len, dim), generator=generator)
    # Keys and values as the pool hands them over: a permuted view of a head-major gather (kv_forward.py).
    key = torch.randn((kv_heads, batch, width, dim), generator=generator).permute(1, 0, 2, 3)
    value = torch.randn((kv_heads, batch, width, dim), generator=generator).permute(1, 0, 2, 3)
    return query, key, value


def _padded_causal_mask(batch: int, q_len: int, width: int) -> torch.Tensor:
    """Left padding of a different length per row, causal over the last q_len columns (True: attend)."""
    causal = torch.ones((q_len, width), dtype=torch.bool).tril(width - q_len)
    mask = causal.expand(batch, 1, q_len, width).clone()
    for row in range(batch):
        mask[row, :, :, :min(row, width - q_len)] = False  # row i has i padding columns (never all)
    return mask


@pytest.mark.parametrize(("heads", "kv_heads"), [(9, 3), (8, 1), (4, 4)])
@pytest.mark.parametrize(("q_len", "width"), [(1, 7), (1, 40), (5, 12), (6, 6)])
@pytest.mark.parametrize("masked", [True, False])
def test_grouped_sdpa_equals_sdpa(heads: int, kv_heads: int, q_len: int, width: int, masked: bool) -> None:
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, layer_idx=0)
    query, key, value = _inputs(3, heads, kv_heads, q_len, width)
    mask = _padded_causal_mask(3, q_len, width) if masked else None
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    got, _ = grouped_sdpa_attention(module, query, key, value, mask, scaling=0.25)
    assert got.shape == expected.shape == (3, q_len, heads, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
