"""Xinference v2 registration schema (sdk/berth_spec/registration.py, which the SDK re-exports as berth.registration): what is accepted and what is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from berth.registration import (
    EmbeddingRegistration,
    LLMRegistration,
    RegistrationError,
    RerankRegistration,
    check_model_type,
    parse_registration,
    size_key,
)

LLM: dict[str, Any] = {
    "version": 2, "context_length": 32768, "model_name": "custom-qwen-2_5", "model_lang": ["en", "zh"],
    "model_ability": ["generate"], "model_description": "d", "model_family": "my-custom-qwen-2.5",
    "model_specs": [{"model_format": "pytorch", "model_size_in_billions": "0_5", "quantization": "none",
                     "model_id": None, "model_hub": "huggingface", "model_uri": "file:///models/q",
                     "model_revision": None, "activated_size_in_billions": None}],
    "chat_template": None, "stop_token_ids": None, "stop": None, "reasoning_start_tag": None,
    "reasoning_end_tag": None, "cache_config": None,
    "virtualenv": {"packages": [], "inherit_pip_config": True, "index_url": None, "extra_index_url": None,
                   "find_links": None, "trusted_host": None, "no_build_isolation": None},
    "is_builtin": False,
}
EMBEDDING = {"version": 2, "model_name": "my-bge", "dimensions": 1024, "max_tokens": 512, "language": ["zh"],
             "model_specs": [{"model_format": "pytorch", "model_hub": "huggingface", "model_id": None,
                              "model_uri": "file:///m", "model_revision": None, "quantization": "none"}],
             "cache_config": None, "virtualenv": {"packages": []}, "is_builtin": False}
RERANK = {"version": 2, "model_name": "my-reranker", "language": ["en"], "type": "unknown", "max_tokens": 512,
          "model_specs": [{"model_format": "pytorch", "model_hub": "huggingface", "model_id": None,
                           "model_revision": None, "model_uri": "file:///r", "quantization": "none"}],
          "virtualenv": {"packages": []}, "is_builtin": False}


def _with(base: dict[str, Any], **changes: Any) -> str:
    data = copy.deepcopy(base)
    data.update(changes)
    return json.dumps(data)


def test_documented_examples_parse() -> None:
    llm = parse_registration("LLM", json.dumps(LLM))
    assert isinstance(llm, LLMRegistration) and llm.model_specs[0].size_key == "0_5"
    assert llm.warnings() == []  # the documented default virtualenv asks for nothing
    assert isinstance(parse_registration("embedding", json.dumps(EMBEDDING)), EmbeddingRegistration)
    assert isinstance(parse_registration("rerank", RERANK), RerankRegistration)
    assert check_model_type("llm") == "LLM"


@pytest.mark.parametrize("name", ["", "-lead", "_lead", "has space", "dots.not.allowed", "x" * 101, "tab\t", "ü"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(RegistrationError, match="model_name"):
        parse_registration("LLM", _with(LLM, model_name=name))


def test_good_names_accepted() -> None:
    for name in ("a", "9lives", "my_model-2", "x" * 100):
        assert parse_registration("LLM", _with(LLM, model_name=name)).model_name == name


@pytest.mark.parametrize(("changes", "match"), [
    ({"model_family": None}, "model_family"),
    ({"model_specs": []}, "model_specs"),
    ({"model_specs": [{"model_format": "pytorch"}]}, "model_id or model_uri"),
    ({"reasoning_start_tag": "<think>"}, "go together"),
    ({"model_ability": ["chat", "hybrid"]}, "hybrid"),
    ({"model_ability": ["teleport"]}, "model_ability"),
    ({"context_length": 0}, "context_length"),
    ({"version": 1}, "version"),
    ({"model_specs": [{"model_uri": "/m", "model_size_in_billions": "half"}]}, "model_size_in_billions"),
])
def test_invalid_llm_registrations(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RegistrationError, match=match):
        parse_registration("LLM", _with(LLM, **changes))


def test_bad_json_and_types() -> None:
    with pytest.raises(RegistrationError, match="not valid JSON"):
        parse_registration("LLM", "{not json")
    with pytest.raises(RegistrationError, match="JSON object"):
        parse_registration("LLM", "[1, 2]")
    with pytest.raises(RegistrationError, match="model_type"):
        parse_registration("video", "{}")
    with pytest.raises(RegistrationError, match="dimensions"):
        parse_registration("embedding", _with(EMBEDDING, dimensions=None))


def test_virtualenv_is_accepted_with_a_warning() -> None:
    registration = parse_registration("LLM", _with(LLM, virtualenv={"packages": ["transformers==4.0"]}))
    assert any("virtualenv" in w and "ignored" in w for w in registration.warnings())


def test_is_builtin_comes_from_the_caller_not_the_json() -> None:
    # A client cannot smuggle a relaxed built-in name through "is_builtin": true.
    with pytest.raises(RegistrationError, match="model_name"):
        parse_registration("LLM", _with(LLM, model_name="qwen2.5.x", is_builtin=True))


def test_size_key() -> None:
    assert size_key(7) == "7" and size_key(0.5) == "0_5" and size_key("1.5") == "1_5" and size_key(7.0) == "7"


def test_every_fault_is_named_in_one_error() -> None:
    # pydantic stops before cross-field rules when a field fails; the user must still hear of all faults.
    faults = {"model_name": "../bad", "model_specs": None, "model_family": None, "reasoning_start_tag": "<think>",
              "model_ability": ["chat", "hybrid"], "context_length": 0}
    with pytest.raises(RegistrationError) as refused:
        data = {k: v for k, v in json.loads(_with(LLM, **faults)).items() if k not in ("model_specs", "model_family")}
        parse_registration("LLM", data)
    message = str(refused.value)
    for named in ("model_specs: Field required", "model_name '../bad' is invalid", "model_family is required",
                  "go together", "hybrid ability needs", "context_length"):
        assert named in message, (named, message)
    with pytest.raises(RegistrationError) as one_rule:  # fields valid, one rule broken: named once, no prefix
        parse_registration("LLM", _with(LLM, model_name="../bad"))
    assert str(one_rule.value).startswith("invalid LLM registration: model_name: model_name ")
