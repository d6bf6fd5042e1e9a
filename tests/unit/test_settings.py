"""Settings: TGI/SageMaker names, precedence, validation, and the round trip to a child's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from berth_server.engines.engine_settings import VllmSettings
from berth_server.settings import Settings, SettingsError


def test_defaults_without_env() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.engine == "auto"
    assert settings.default_model_uid == "default"
    assert settings.max_body_bytes == 6 * 1024 * 1024
    assert settings.messages_api_enabled is False


def test_sagemaker_port_wins_over_port() -> None:
    assert Settings.from_env({"PORT": "9000"}).port == 9000
    assert Settings.from_env({"PORT": "9000", "SAGEMAKER_BIND_TO_PORT": "7000"}).port == 7000


def test_tgi_names() -> None:
    settings = Settings.from_env({
        "HF_MODEL_ID": "org/model", "HF_MODEL_REVISION": "abc", "SM_NUM_GPUS": "4", "HF_MODEL_QUANTIZE": "awq",
        "HF_MODEL_TRUST_REMOTE_CODE": "true", "MAX_INPUT_TOKENS": "100", "MAX_TOTAL_TOKENS": "200",
        "MAX_BATCH_PREFILL_TOKENS": "4096", "MAX_CONCURRENT_REQUESTS": "7", "MESSAGES_API_ENABLED": "TRUE",
    })
    assert (settings.hf_model_id, settings.hf_model_revision, settings.sm_num_gpus) == ("org/model", "abc", 4)
    assert (settings.quantize, settings.trust_remote_code) == ("awq", True)
    assert (settings.max_input_tokens, settings.max_total_tokens) == (100, 200)
    assert (settings.max_batch_prefill_tokens, settings.max_concurrent_requests) == (4096, 7)
    assert settings.messages_api_enabled is True
    assert settings.default_model_uid == "org/model"
    assert Settings.from_env({"HF_MODEL_ID": "x", "BERTH_MODEL_UID": "y"}).default_model_uid == "y"


def test_vllm_pass_through_from_both_prefixes() -> None:
    own = VllmSettings.from_env({"BERTH_VLLM_ENFORCE_EAGER": "true", "SM_VLLM_MAX_NUM_SEQS": "8"})
    assert own.args == {"enforce_eager": "true", "max_num_seqs": "8"}


@pytest.mark.parametrize("env, name", [
    ({"PORT": "http"}, "PORT"),
    ({"MAX_TOTAL_TOKENS": "0"}, "MAX_TOTAL_TOKENS"),
    ({"MESSAGES_API_ENABLED": "maybe"}, "MESSAGES_API_ENABLED"),
    ({"BERTH_KV_CACHE_GB": "lots"}, "BERTH_KV_CACHE_GB"),
])
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_to_env_round_trips(tmp_path: Path) -> None:
    settings = Settings(hf_model_id="/m", model_uid="u", max_input_tokens=5, max_total_tokens=9, engine="vllm",
                        home=tmp_path, runtime_dir=tmp_path / "run", messages_api_enabled=True,
                        port=1234, kv_cache_gb=2.5)
    assert Settings.from_env(settings.to_env()) == settings


def test_every_setting_round_trips_with_a_value_other_than_its_default(tmp_path: Path) -> None:
    import dataclasses

    from berth_server.settings import LoraSettings

    samples = {"str": "x1", "upper": "DEBUG", "lower": "llama.cpp", "int": 17, "float": 2.5, "bool": True, "path": tmp_path / "p"}
    changed = {}
    for spec in dataclasses.fields(Settings):
        if "env" in spec.metadata and spec.metadata["export"]:
            changed[spec.name] = samples[spec.metadata["kind"]]
    settings = Settings(**changed, model_roots=(tmp_path,), tool_call_parser="hermes", lora=LoraSettings(enabled=True, max_loras=2,
                                                                     adapters=(("a", "/a"),)))
    assert all(getattr(settings, name) != getattr(Settings(), name) for name in changed)
    assert Settings.from_env(settings.to_env()) == settings
    # Each setting's default is declared once, on its field: an empty environment gives exactly those.
    assert Settings.from_env({}) == Settings()
