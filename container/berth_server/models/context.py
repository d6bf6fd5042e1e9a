"""A checkpoint's own context length, read from its config files (no torch, no vLLM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The keys vLLM reads for a model's maximum length (vllm/transformers_utils/model_arch_config_convertor.py);
# the smallest one present wins, as there.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_context_length(model_dir: Path) -> int | None:
    """The longest sequence (prompt + output) the checkpoint is made for, or None when it does not say.

    Rope scaling factors are not applied: a server-wide limit capped here is at worst a little
    shorter than vLLM would allow, never longer (which vLLM refuses and transformers gets wrong).
    """
    config = _read(Path(model_dir) / "config.json")
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    lengths = [int(v) for key in _LENGTH_KEYS if isinstance(v := text.get(key), int | float) and v > 0]
    tokenizer_limit = _read(Path(model_dir) / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**9:  # huge values mean "unset"
        lengths.append(tokenizer_limit)
    return min(lengths) if lengths else None


def capped_length(requested: int | None, model_dir: Path) -> tuple[int | None, int | None]:
    """(requested capped by the model's own context, that context): a server-wide MAX_TOTAL_TOKENS
    larger than a small model's context must not stop the model from loading."""
    own = model_context_length(model_dir)
    if requested is None or own is None:
        return requested or own, own
    return min(requested, own), own


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype the checkpoint's config.json declares its weights in (`dtype`, or the older `torch_dtype`)."""
    config = _read(Path(model_dir) / "config.json")
    nested = config.get("text_config")
    for source in (config, nested if isinstance(nested, dict) else {}):
        for key in ("dtype", "torch_dtype"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value.removeprefix("torch.")
    return None
