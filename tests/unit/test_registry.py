"""The registry: built-in catalog, custom registrations, persistence under BERTH_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from berth_server.errors import Conflict, InvalidRequest, NotFound
from berth_server.models.registry import Registry
from berth_spec.registration import LLMRegistration

from .test_registration import EMBEDDING, LLM, _with


def test_catalog_has_the_families_people_deploy() -> None:
    registry = Registry(None)
    llms = {e.registration.model_name: e.registration for e in registry.entries("LLM")}
    assert len(llms) >= 20
    for name in ("qwen2.5-instruct", "qwen3", "qwq-32b", "llama-3.1-instruct", "llama-3.2-instruct",
                 "llama-3.3-instruct", "mistral-instruct-v0.3", "mixtral-instruct-v0.1", "mistral-nemo-instruct",
                 "gemma-2-it", "gemma-3-it", "phi-3-mini-4k-instruct", "phi-4", "deepseek-r1-distill-qwen",
                 "deepseek-r1-distill-llama", "qwen2.5-coder-instruct"):
        assert name in llms, name
    for registration in llms.values():
        assert isinstance(registration, LLMRegistration) and registration.is_builtin
        assert all(spec.model_id and "/" in spec.model_id for spec in registration.model_specs)
        assert "chat" in registration.model_ability and registration.context_length >= 4096
        if "reasoning" in registration.model_ability:
            assert (registration.reasoning_start_tag, registration.reasoning_end_tag) == ("<think>", "</think>")
    qwen3 = llms["qwen3"]
    assert {"reasoning", "hybrid"} <= set(qwen3.model_ability) and qwen3.thinking_variable == "enable_thinking"
    assert llms["deepseek-v3.1"].thinking_variable == "thinking"
    assert llms["deepseek-r1-distill-qwen"].thinking_variable is None  # always thinks
    assert "Qwen/Qwen2.5-7B-Instruct" in {s.model_id for s in llms["qwen2.5-instruct"].model_specs}
    assert {e.registration.model_name for e in registry.entries("embedding")} >= {"bge-small-en-v1.5", "bge-m3"}
    assert {e.registration.model_name for e in registry.entries("rerank")} >= {"bge-reranker-base"}


def test_persisted_registration_survives_restart_and_unregister_removes_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.register("LLM", json.dumps(LLM), persist=True)
    registry.register("embedding", json.dumps(EMBEDDING), persist=False)
    path = tmp_path / "registrations" / "LLM" / "custom-qwen-2_5.json"
    assert json.loads(path.read_text())["model_family"] == "my-custom-qwen-2.5"
    assert not list(path.parent.glob(".tmp-*"))  # the temp file was renamed into place
    again = Registry(tmp_path)
    entry = again.get("LLM", "custom-qwen-2_5")
    assert entry.persisted and not entry.registration.is_builtin
    with pytest.raises(NotFound):
        again.get("embedding", "my-bge")  # not persisted: gone after a restart
    listed = again.entries("LLM")
    assert listed[-1].registration.model_name == "custom-qwen-2_5"
    again.unregister("LLM", "custom-qwen-2_5")
    assert not path.exists()
    with pytest.raises(NotFound):
        Registry(tmp_path).get("LLM", "custom-qwen-2_5")


def test_register_refusals(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(Conflict, match="built-in"):
        registry.register("LLM", _with(LLM, model_name="qwen3"), persist=False)
    with pytest.raises(InvalidRequest, match="model_family"):
        registry.register("LLM", _with(LLM, model_family="qwen3"), persist=False)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        registry.register("LLM", "{", persist=False)
    with pytest.raises(InvalidRequest, match="model_name"):
        registry.register("LLM", _with(LLM, model_name="../evil"), persist=True)
    with pytest.raises(InvalidRequest, match="model_type"):
        registry.register("video", json.dumps(LLM), persist=False)
    registry.register("LLM", json.dumps(LLM), persist=False)
    with pytest.raises(Conflict, match="already registered"):
        registry.register("LLM", json.dumps(LLM), persist=False)
    with pytest.raises(InvalidRequest, match="built in"):
        registry.unregister("LLM", "qwen3")
    with pytest.raises(NotFound):
        registry.unregister("LLM", "nope")
    with pytest.raises(NotFound):
        registry.get("rerank", "custom-qwen-2_5")


def test_chat_template_required_unless_the_local_tokenizer_has_one(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    templated = tmp_path / "templated"
    templated.mkdir()
    (templated / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    registry = Registry(tmp_path)
    spec = dict(LLM["model_specs"][0])
    chat = {"model_ability": ["chat"], "model_specs": [{**spec, "model_uri": f"file://{bare}"}]}
    with pytest.raises(InvalidRequest, match="chat_template"):
        registry.register("LLM", _with(LLM, **chat), persist=False)
    registry.register("LLM", _with(LLM, **chat, chat_template="{{ messages }}"), persist=False)
    registry.register("LLM", _with(LLM, model_name="b", model_ability=["chat"],
                                   model_specs=[{**spec, "model_uri": str(templated)}]), persist=False)
    # Remote weights cannot be checked now; the launch checks once they are local.
    registry.register("LLM", _with(LLM, model_name="c", model_ability=["chat"],
                                   model_specs=[{**spec, "model_uri": "s3://b/p/"}]), persist=False)


def test_a_corrupt_persisted_file_is_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "registrations" / "LLM"
    directory.mkdir(parents=True)
    (directory / "broken.json").write_text("{")
    (directory / "ok.json").write_text(_with(LLM, model_name="ok"))
    registry = Registry(tmp_path)
    assert registry.get("LLM", "ok").persisted
