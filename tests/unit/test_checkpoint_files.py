"""checkpoint.py: the one reader of a checkpoint folder's config, generation config and chat template."""

from __future__ import annotations

import json
from pathlib import Path

from berth_server.checkpoint import (
    chat_template,
    checkpoint_dtype,
    generation_eos_ids,
    model_context_length,
    text_config,
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
