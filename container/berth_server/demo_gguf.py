"""Write a local Llama checkpoint (the demo models) as one float32 GGUF file, with the gguf package's writer.

Tests serve the tiny random models on the llama.cpp engine this way; no converter script or hub
access is needed. Tensor names and the q/k row order follow llama.cpp's convert_hf_to_gguf.py;
the tokenizer (byte-level BPE, "gpt2" in GGUF terms), EOS and chat template go into the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3


def _permute(weights: Any, n_head: int) -> Any:
    """HF's rotate-half q/k rows to llama.cpp's interleaved rope order (convert_hf_to_gguf's permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_name(name: str) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    if name.startswith("model.layers.") and ".".join(parts[3:]) in _LAYER_TENSORS:
        return f"blk.{parts[2]}.{_LAYER_TENSORS['.'.join(parts[3:])]}"
    return None


def write_gguf(model_dir: Path, target: Path) -> Path:
    """Write `model_dir` (a Llama checkpoint with a byte-level BPE tokenizer.json) to `target` once."""
    marker = target.with_suffix(".source")
    stamp = str((model_dir / "model.safetensors").stat().st_mtime_ns)
    if target.is_file() and marker.is_file() and marker.read_text() == stamp:
        return target
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, model_dir, tokenizer)
    for name, tensor in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        gguf_name = _gguf_name(name)
        if gguf_name is None:
            continue
        if name.endswith("q_proj.weight"):
            tensor = _permute(tensor, heads)
        elif name.endswith("k_proj.weight"):
            tensor = _permute(tensor, kv_heads)
        writer.add_tensor(gguf_name, tensor.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    marker.write_text(stamp)
    return target


def _add_tokenizer(writer: Any, model_dir: Path, tokenizer: Any) -> None:
    """Vocabulary, merges, special ids and chat template, as llama.cpp and transformers read them back."""
    data = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for text, index in vocab.items():
        tokens[index] = text
    special = set(tokenizer.all_special_ids) | {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([_TOKEN_CONTROL if i in special else _TOKEN_NORMAL for i in range(len(tokens))])
    merges = data["model"].get("merges", [])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
