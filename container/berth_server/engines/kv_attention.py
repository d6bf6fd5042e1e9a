"""The pooled engine's attention: SDPA's computation, reading each cached key and value once.

transformers' own SDPA path repeats each key/value head for every query head of its group
(`repeat_kv`) whenever a mask is given, and the pooled engine always gives one (its rows are
padded): per step and layer that wrote the whole step view again, `groups` times larger, before
attention read it. Here the group's query heads are folded into the query rows instead
([B, kv_heads, groups * Q, D]). A decode step (a few rows per head) runs as two batched matmuls
over the pool's head-major gather (kv_forward.py), which needs no copy, where SDPA's CPU flash
kernel spends most of a decode step on setup; longer queries (prefill chunks) go to SDPA.
Registered in transformers' attention-function registry and chosen only for models on "sdpa";
measured in bench/RESULTS.md (issue 21).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "berth_grouped_sdpa"
# Up to this many query rows per key/value head (a decode step: the group's heads), two matmuls beat SDPA's
# flash kernel on the CPU, which tiles for long queries and spends most of a decode step setting up.
MATMUL_ROWS = 16


def grouped_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [B, H, Q, D], key/value [B, Hkv, W, D] -> [B, Q, H, D]."""
    batch, heads, q_len, _ = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    plain = dropout == 0.0 and not kwargs.get("output_attentions") and kwargs.get("position_bias") is None
    odd_mask = attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1)
    if not plain or odd_mask or kwargs.get("s_aux") is not None or (groups == 1 and q_len > MATMUL_ROWS):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if attention_mask is None:
        # Folding the groups into the rows breaks SDPA's own causal flag: spell its mask out (top-left
        # aligned, as is_causal means; transformers passes no mask only when there is no past).
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        mask = (torch.ones((q_len, width), dtype=torch.bool, device=query.device).tril()
                if causal and q_len > 1 else None)
    else:
        mask = attention_mask[:, :, :, :width]
    if mask is not None:  # one mask row per query row: group g's row g * Q + q is row q's
        mask = mask.expand(batch, 1, q_len, width).repeat(1, 1, groups, 1)
    folded = query.reshape(batch, kv_heads, groups * q_len, query.shape[-1])
    if groups * q_len <= MATMUL_ROWS:
        out = _matmul_attention(folded, key, value, mask, scaling)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    out = out.view(batch, kv_heads, groups, q_len, value.shape[-1]).reshape(batch, heads, q_len, value.shape[-1])
    return out.transpose(1, 2).contiguous(), None


def _matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float | None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, the softmax in float32 (as transformers' eager attention does).

    Batched over (head, row) in the order the pool's gather lays keys out ([heads, B, W, dim], kv_forward.py),
    so only the small query, scores and output are ever rearranged."""
    batch, heads, rows, dim = query.shape
    head_major = (heads, batch)
    keys = key.transpose(0, 1).reshape(heads * batch, key.shape[2], dim)  # no copy for the pool's view
    values = value.transpose(0, 1).reshape(heads * batch, value.shape[2], value.shape[3])
    q = query.transpose(0, 1).reshape(heads * batch, rows, dim)
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.bmm(q, keys.transpose(1, 2)).float().mul_(scale).view(*head_major, rows, -1)
    if mask is not None:  # [B, 1, rows, W] -> broadcast over heads as [1, B, rows, W]
        mask = mask.transpose(0, 1)
        # The float32 minimum rather than -inf (as transformers' eager attention): a padding row masked whole
        # gets a harmless uniform softmax instead of NaN.
        blocked = torch.finfo(torch.float32).min
        scores = scores.masked_fill_(~mask, blocked) if mask.dtype == torch.bool else scores.add_(mask)
    probs = torch.softmax(scores, dim=-1).to(values.dtype).view(heads * batch, rows, -1)
    return torch.bmm(probs, values).view(*head_major, rows, -1).transpose(0, 1)


def use_grouped_sdpa(model: Any) -> bool:
    """Switch a loaded model from "sdpa" to the grouped form; False (unchanged) for any other attention."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not type(model).__module__.startswith("transformers."):
        return False  # remote code may branch on the implementation's name itself: leave it as it chose
    AttentionInterface.register(NAME, grouped_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return getattr(model.config, "_attn_implementation", None) == NAME
