"""checkpoint.py: the one reader of a checkpoint folder's config, generation config and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from berth_server.checkpoint import (
    architecture,
    chat_template,
    checkpoint_dtype,
    generation_eos_ids,
    model_context_length,
    parameter_count,
    text_config,
    weights_size,
)


def test_a_multimodal_config_is_read_through_its_text_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "bfloat16",
        "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 4096, "vocab_size": 99}}))
    text = text_config(tmp_path)
    assert text["model_type"] == "gemma3_text" and text["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert model_context_length(tmp_path) == 4096 and checkpoint_dtype(tmp_path) == "bfloat16"


def test_eos_ids_and_the_chat_template_from_any_of_their_files(tmp_path: Path) -> None:
    assert generation_eos_ids(tmp_path) == set() and chat_template(tmp_path) is None  # nothing there: empty
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    assert generation_eos_ids(tmp_path) == {2, 7}
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "from tokenizer_config"}')
    assert chat_template(tmp_path) == "from tokenizer_config"
    (tmp_path / "chat_template.jinja").write_text("from the jinja file")
    assert chat_template(tmp_path) == "from the jinja file"  # transformers 5 writes this one, and it wins
    (tmp_path / "config.json").write_text("{not json")
    assert text_config(tmp_path) == {}


def test_weight_facts_from_safetensors_headers_and_a_gguf_file(tmp_path: Path) -> None:
    """Architecture, parameter count and size (Ollama's /api/show and /api/tags), read from headers alone."""
    from gguf import GGUFWriter
    from safetensors.numpy import save_file

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    assert (architecture(folder), parameter_count(folder), weights_size(folder)) == (None, None, None)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}, str(folder / "model.safetensors"))
    assert (architecture(folder), parameter_count(folder)) == ("qwen2", 17)
    assert weights_size(folder) == (folder / "model.safetensors").stat().st_size
    gguf_file = tmp_path / "m.gguf"
    writer = GGUFWriter(str(gguf_file), "llama")
    writer.add_tensor("t", np.zeros((2, 3), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert (architecture(gguf_file), parameter_count(gguf_file)) == ("llama", 6)
    assert weights_size(gguf_file) == gguf_file.stat().st_size
