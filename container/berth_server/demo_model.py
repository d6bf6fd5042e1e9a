"""Generate small Llama models locally: a BPE tokenizer trained on local text plus random weights.

No hub access is needed. `make run` serves `demo://tiny`; tests use `tiny`, `tiny-reasoning`,
`tiny-embedding`; benchmarks use `bench` (~98M parameters, fp32). Generation is deterministic
and cached: a model dir is reused when its marker file matches the recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

DEMO_SCHEME = "demo://"

# ChatML with a switchable thinking block. The reasoning variant opens <think> in the prompt
# unless enable_thinking is false, as Qwen3's template does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)
REASONING_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and not enable_thinking -%}<think>\n\n</think>\n\n"
    "{%- else -%}<think>\n{%- endif -%}"
    "{%- endif -%}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


@dataclass(frozen=True)
class DemoRecipe:
    """The shape of a generated model."""

    name: str
    kind: str = "causal-lm"  # or "encoder" (embedding/rerank)
    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head size = hidden / heads; vLLM's CPU kernels need >= 32
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    reasoning: bool = False
    seed: int = 1234


RECIPES: dict[str, DemoRecipe] = {
    "tiny": DemoRecipe("tiny"),
    "tiny-reasoning": DemoRecipe("tiny-reasoning", reasoning=True),
    "tiny-embedding": DemoRecipe("tiny-embedding", kind="encoder"),
    "tiny-rerank": DemoRecipe("tiny-rerank", kind="reranker"),
    # ~98M parameters: the size FINDINGS.md measured peers on.
    "bench": DemoRecipe(
        "bench", vocab_size=8000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
    ),
}


def _corpus() -> list[str]:
    """Local English text to train the tokenizer on: the standard library's docstrings."""
    import collections
    import json as _json
    import os
    import pathlib
    import re
    import string
    import textwrap

    texts: list[str] = []
    for module in (collections, _json, os, pathlib, re, string, textwrap, argparse, hashlib):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name, None), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    texts.append("The quick brown fox jumps over the lazy dog. Hello! How are you today? " * 4)
    texts.append(" ".join(str(i) for i in range(1000)))
    return texts


def _train_tokenizer(recipe: DemoRecipe):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _marker(recipe: DemoRecipe) -> str:
    return hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:16]


def build(recipe: DemoRecipe, target: Path) -> Path:
    """Write tokenizer, config and random weights for `recipe` into `target` (reused if present)."""
    marker_file = target / "berth-demo.json"
    if marker_file.exists() and json.loads(marker_file.read_text()).get("marker") == _marker(recipe):
        return target
    import torch
    from transformers import PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(recipe), bos_token="<s>", eos_token="<|im_end|>",
        unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "</s>", "<think>", "</think>"],
    )
    tokenizer.chat_template = REASONING_CHAT_TEMPLATE if recipe.reasoning else CHAT_TEMPLATE
    tokenizer.save_pretrained(target)
    vocab = len(tokenizer)
    if recipe.kind == "causal-lm":
        _save_llama(recipe, vocab, tokenizer, target)
    else:
        _save_encoder(recipe, vocab, tokenizer, target)
    marker_file.write_text(json.dumps({"marker": _marker(recipe), "recipe": asdict(recipe)}))
    return target


def _save_llama(recipe: DemoRecipe, vocab: int, tokenizer, target: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(target, safe_serialization=True)


def _save_encoder(recipe: DemoRecipe, vocab: int, tokenizer, target: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=vocab, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = 1  # a reranker scores one relevance logit
    model = BertForSequenceClassification(config) if recipe.kind == "reranker" else BertModel(config)
    model.save_pretrained(target, safe_serialization=True)


def demo_path(name: str, home: Path) -> Path:
    """Where the demo model `name` lives under BERTH_HOME."""
    return home / "demo-models" / name


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m berth_server.demo_model [--name tiny] [--out DIR]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="tiny", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, help="target directory (default: under BERTH_HOME)")
    args = parser.parse_args(argv)
    if args.out is None:
        from berth_server.settings import Settings

        args.out = demo_path(args.name, Settings.from_env().home)
    print(build(RECIPES[args.name], args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
