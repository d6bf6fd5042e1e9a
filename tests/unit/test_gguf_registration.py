"""ggufv2 specs as Xinference writes them: parsing, choosing by quantization, and the file a launch serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from berth_server.errors import InvalidRequest, WeightsNotFound
from berth_server.models.launch_resolver import build_config, parse_launch
from berth_server.settings import Settings
from berth_spec.registration import RegistrationError, parse_registration


def _registration(spec: dict[str, Any], **extra: Any) -> Any:
    return parse_registration("LLM", {
        "version": 2, "model_name": "g", "model_family": "g-family", "model_ability": ["chat"],
        "model_specs": [{"model_format": "ggufv2", "model_size_in_billions": 7, **spec}], **extra})


def test_template_and_quantizations_pick_the_file(tmp_path: Path) -> None:
    (tmp_path / "m.Q4_K_M.gguf").write_bytes(b"")
    registration = _registration({"model_uri": str(tmp_path), "quantizations": ["Q4_K_M", "Q8_0"],
                                  "model_file_name_template": "m.{quantization}.gguf"})
    config = build_config(Settings(), registration, "LLM", parse_launch({"model_name": "g", "quantization": "q4_k_m"}),
                          "u")
    assert (config.source, config.gguf_file) == (str(tmp_path), "m.Q4_K_M.gguf")
    assert config.context_length is None  # the GGUF metadata says it
    with pytest.raises(InvalidRequest, match="Q4_K_M|Q8_0"):
        build_config(Settings(), registration, "LLM", parse_launch({"model_name": "g", "quantization": "Q2_K"}), "u")
    with pytest.raises(WeightsNotFound, match="m.Q4_K_M.gguf"):
        build_config(Settings(), registration, "LLM", parse_launch({"model_name": "g", "quantization": "Q8_0"}), "u")


def test_hub_repo_spec_and_file_uri(tmp_path: Path) -> None:
    hub = _registration({"model_id": "org/repo-GGUF", "quantization": "Q4_0",
                         "model_file_name_template": "repo-{quantization}.gguf"}, context_length=4096)
    config = build_config(Settings(), hub, "LLM", parse_launch({"model_name": "g"}), "u")
    assert (config.source, config.gguf_file, config.context_length) == ("org/repo-GGUF", "repo-Q4_0.gguf", 4096)
    file = tmp_path / "x.gguf"
    file.write_bytes(b"")
    direct = build_config(Settings(), _registration({"model_uri": str(file), "quantization": "Q4_0"}), "LLM",
                          parse_launch({"model_name": "g"}), "u")
    assert (direct.source, direct.gguf_file) == (str(file), None)


def test_a_folder_without_a_template_is_refused() -> None:
    with pytest.raises(RegistrationError, match="model_file_name_template"):
        _registration({"model_uri": "/models/folder", "quantization": "Q4_0"})
    with pytest.raises(RegistrationError, match="quantization"):
        _registration({"model_id": "o/r", "model_file_name_template": "r.{quant}.gguf"})


def test_catalog_families_offer_public_gguf_repos() -> None:
    from berth_server.models.registry import Registry

    registry = Registry(None)
    qwen = registry.get("LLM", "qwen2.5-instruct").registration
    request = parse_launch({"model_name": "qwen2.5-instruct", "model_format": "ggufv2", "model_size_in_billions": "0_5",
                            "quantization": "Q4_K_M"})
    config = build_config(Settings(), qwen, "LLM", request, "u")
    assert (config.source, config.gguf_file) == ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf")
    formats = {s.model_format for name in ("qwen3", "llama-3.2-instruct")
               for s in registry.get("LLM", name).registration.model_specs}
    assert "ggufv2" in formats
