"""Fill-in-the-middle: the marker tokens a code model was trained with, found in its vocabulary.

A model that has them can complete the middle between a prefix and a suffix (Ollama's `suffix`):
the prompt is PREFIX-marker prefix SUFFIX-marker suffix MIDDLE-marker, and the model writes the
middle. A model without them cannot, and routes that take a suffix refuse it for that model.
"""

from __future__ import annotations

from typing import Any

# (prefix, suffix, middle) markers, in prefix-suffix-middle order, as each family's tokenizer spells them.
FIM_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, StarCoder2, SantaCoder
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3-Coder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)


def fim_markers(tokenizer: Any) -> list[str] | None:
    """The model's (prefix, suffix, middle) markers when its vocabulary holds all three; else None."""
    vocabulary = tokenizer.get_vocab()
    for markers in FIM_MARKERS:
        if all(marker in vocabulary for marker in markers):
            return list(markers)
    return None
