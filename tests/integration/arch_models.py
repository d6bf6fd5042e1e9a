"""Tiny random models shaped like each architecture in the built-in catalog, with the family's chat template.

Each family keeps what makes its architecture itself (model_type, GQA, sliding windows, soft-capping,
q/k norms, MoE routing, MLA, tied embeddings, rope scaling) at a width a CPU runs in seconds; head
size stays >= 32 for vLLM's CPU kernels. Sliding windows are shorter than the test prompts, so the
windowed layers are exercised. The tokenizer is a small BPE trained on local text, with the family's
special tokens and chat template. Built once and cached, like demo_model's models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
          "{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}[/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
         "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
DEEPSEEK = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
            "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>"
            "{% else %}{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")

# Width shared by every family: 4 heads of 32 (vLLM's CPU minimum), 2 KV heads (GQA).
BASE: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512,
    # Wide initial weights: at the usual 0.02 a 2-layer random model repeats one token, which would hide errors.
    "initializer_range": 0.3,
}
WINDOW = 16  # shorter than the longer test prompts


@dataclass(frozen=True)
class ArchFamily:
    """One catalog architecture: how its tiny model and tokenizer are made, and the catalog family it launches as."""

    name: str
    catalog: str  # model_name in container/berth_server/models/catalog
    model_type: str
    config: dict[str, Any]
    template: str
    bos: str
    eos: str
    specials: tuple[str, ...] = ()
    what: str = ""  # the architecture traits it carries, for the README table
    # Gemma multiplies embeddings by sqrt(hidden) and ties them to the output: unscaled, the embedding
    # swamps the layers and the model echoes its input token; this scale keeps the layers in play.
    embedding_scale: float = 1.0


FAMILIES: tuple[ArchFamily, ...] = (
    ArchFamily("qwen2", "qwen2.5-instruct", "qwen2", {"tie_word_embeddings": True, "use_sliding_window": False},
               CHATML, "<|endoftext|>", "<|im_end|>", ("<|im_start|>", "<|endoftext|>"),
               "GQA, qkv bias, tied embeddings"),
    ArchFamily("qwen3", "qwen3", "qwen3", {"tie_word_embeddings": True, "head_dim": 32},
               CHATML, "<|endoftext|>", "<|im_end|>", ("<|im_start|>", "<think>", "</think>"),
               "GQA, q/k RMSNorm, tied embeddings, thinking template"),
    ArchFamily("qwen3-moe", "qwen3-instruct-2507", "qwen3_moe",
               {"head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                "decoder_sparse_step": 1, "norm_topk_prob": True},
               CHATML, "<|endoftext|>", "<|im_end|>", ("<|im_start|>",), "MoE (4 experts, top-2), q/k RMSNorm"),
    ArchFamily("llama3", "llama-3.2-instruct", "llama",
               {"tie_word_embeddings": True, "rope_parameters": {
                   "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 128, "rope_theta": 500000.0}},
               LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>",
                                                          "<|end_of_text|>"),
               "GQA, llama3 rope scaling, tied embeddings"),
    ArchFamily("smollm2", "smollm2-instruct", "llama", {"tie_word_embeddings": True},
               CHATML, "<|im_start|>", "<|im_end|>", ("<|endoftext|>",), "Llama layout, tied embeddings"),
    ArchFamily("mistral", "mistral-instruct-v0.3", "mistral", {"head_dim": 64, "sliding_window": None},
               MISTRAL, "<s>", "</s>", ("[INST]", "[/INST]"), "GQA, head_dim != hidden/heads (as Nemo)"),
    ArchFamily("mixtral", "mixtral-instruct-v0.1", "mixtral",
               {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
               MISTRAL, "<s>", "</s>", ("[INST]", "[/INST]"), "MoE (4 experts, top-2), GQA"),
    ArchFamily("gemma2", "gemma-2-it", "gemma2",
               {"head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": WINDOW,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": True},
               GEMMA, "<bos>", "<end_of_turn>", ("<eos>", "<start_of_turn>"),
               f"sliding window {WINDOW} / global alternating, logit soft-capping, tied embeddings",
               embedding_scale=128 ** -0.5),
    ArchFamily("gemma3", "gemma-3-it", "gemma3_text",
               {"num_hidden_layers": 3, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": WINDOW,
                "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                "tie_word_embeddings": True},
               GEMMA, "<bos>", "<end_of_turn>", ("<eos>", "<start_of_turn>"),
               f"sliding window {WINDOW} (2 local : 1 global), q/k RMSNorm, two rope bases",
               embedding_scale=128 ** -0.5),
    ArchFamily("phi3", "phi-3-mini-4k-instruct", "phi3", {"num_key_value_heads": 4},
               PHI3, "<s>", "<|end|>", ("<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"),
               "fused qkv and gate/up projections"),
    ArchFamily("phi3-longrope", "phi-3-mini-128k-instruct", "phi3",
               {"num_key_value_heads": 4, "original_max_position_embeddings": 128, "rope_parameters": {
                   "rope_type": "longrope", "short_factor": [1.0 + i / 16 for i in range(16)],
                   "long_factor": [2.0 + i / 8 for i in range(16)], "rope_theta": 10000.0,
                   "original_max_position_embeddings": 128}},
               PHI3, "<s>", "<|end|>", ("<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"),
               "longrope scaling (128k variant)"),
    # topk_method and scoring_func as in DeepSeek-V3's own config.json: transformers' class implies them
    # (and drops them on save), vLLM reads them (engines/vllm_engine.py refuses a config without them).
    ArchFamily("deepseek-v3", "deepseek-v3", "deepseek_v3",
               {"num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 64,
                "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32, "head_dim": 32,
                "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 2,
                "topk_group": 1, "first_k_dense_replace": 1, "moe_intermediate_size": 64,
                "routed_scaling_factor": 2.5, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                "norm_topk_prob": True, "rope_parameters": {
                    "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                    "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0}},
               DEEPSEEK, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ("<｜User｜>", "<｜Assistant｜>"),
               "MLA (q/kv LoRA ranks), MoE with shared expert and group routing, yarn rope"),
)


def _marker(family: ArchFamily) -> str:
    return hashlib.sha256(json.dumps({**asdict(family), "base": BASE, "v": 1}, sort_keys=True).encode()).hexdigest()[:16]


def build_family(family: ArchFamily, target: Path) -> Path:
    """Write tokenizer, config and random float32 weights for `family` into `target` (reused when current)."""
    marker_file = target / "berth-arch.json"
    if marker_file.exists() and json.loads(marker_file.read_text()).get("marker") == _marker(family):
        return target
    import torch
    from berth_server.demo_model import _corpus
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    specials = list(dict.fromkeys([family.bos, family.eos, *family.specials, "<pad>", "<unk>"]))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=family.bos, eos_token=family.eos,
                                        unk_token="<unk>", pad_token="<pad>",
                                        additional_special_tokens=list(family.specials))
    tokenizer.chat_template = family.template
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(target)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (family.bos, family.eos, "<pad>")}
    config = AutoConfig.for_model(family.model_type, **{**BASE, **family.config}, vocab_size=len(tokenizer),
                                  bos_token_id=ids[family.bos], eos_token_id=ids[family.eos],
                                  pad_token_id=ids["<pad>"], dtype="float32")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(family.embedding_scale)
    model.generation_config = GenerationConfig(bos_token_id=ids[family.bos], eos_token_id=[ids[family.eos]],
                                               pad_token_id=ids["<pad>"])
    model.save_pretrained(target, safe_serialization=True)
    marker_file.write_text(json.dumps({"marker": _marker(family), "family": family.name}))
    return target
