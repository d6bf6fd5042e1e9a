"""Model management control handlers over a fake supervisor: launch resolution, describe, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from berth_server.errors import Conflict, InvalidRequest, NotFound, WeightsNotFound
from berth_server.launch_config import ModelLaunchConfig, ModelStatus
from berth_server.models.management import control_handlers, enrich_default_config
from berth_server.settings import Settings

from .test_registration import EMBEDDING, LLM, _with


class FakeSupervisor:
    """Records launches; every launched model is 'ready' at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.launched: list[tuple[ModelLaunchConfig, bool]] = []
        self._configs: dict[str, ModelLaunchConfig] = {}
        self._statuses: dict[str, ModelStatus] = {}

    async def launch(self, config: ModelLaunchConfig, wait_ready: bool) -> None:
        self.launched.append((config, wait_ready))
        self._configs[config.uid] = config
        self._statuses[config.uid] = ModelStatus(uid=config.uid, state="ready" if wait_ready else "loading",
                                                 progress=0.5)

    async def terminate(self, uid: str) -> None:
        self._statuses.pop(uid)

    def statuses(self) -> dict[str, ModelStatus]:
        return dict(self._statuses)

    def configs(self) -> dict[str, ModelLaunchConfig]:
        return dict(self._configs)


@pytest.fixture
def env(tmp_path: Path) -> tuple[dict[str, Any], FakeSupervisor, Path]:
    settings = Settings(home=tmp_path / "home")
    supervisor = FakeSupervisor(settings)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }} enable_thinking"}))
    return control_handlers(settings, supervisor), supervisor, weights


def call(handlers: dict[str, Any], method: str, **params: Any) -> Any:
    return asyncio.run(handlers[method](params))


def test_launch_builtin_from_model_path(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, supervisor, weights = env
    body = {"model_name": "qwen3", "model_engine": "Transformers", "model_path": str(weights),
            "model_uid": None, "replica": 1, "n_gpu": "auto", "peft_model_config": None, "worker_ip": None,
            "gpu_idx": None, "enable_thinking": False, "num_threads": 1, "envs": None}
    assert call(handlers, "models.launch", **body) == {"model_uid": "qwen3"}
    config, wait = supervisor.launched[-1]
    assert wait and config.source == str(weights) and config.engine == "transformers"
    assert (config.reasoning_start_tag, config.reasoning_end_tag) == ("<think>", "</think>")
    assert config.thinking_variable == "enable_thinking" and config.default_enable_thinking is False
    assert config.engine_args == {"num_threads": 1} and config.context_length == 40960
    assert {"chat", "reasoning", "hybrid"} <= set(config.abilities)
    # The name is taken now: a second launch gets a fresh uid; an explicit duplicate is a conflict.
    second = call(handlers, "models.launch", model_name="qwen3", model_path=str(weights))["model_uid"]
    assert second.startswith("qwen3-") and second != "qwen3"
    with pytest.raises(Conflict):
        call(handlers, "models.launch", model_name="qwen3", model_path=str(weights), model_uid="qwen3")


def test_launch_resolves_hub_ids_per_size_and_format(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, supervisor, _ = env
    call(handlers, "models.launch", model_name="qwen2.5-instruct", model_size_in_billions=7, model_format="awq",
         model_engine="vLLM", model_uid="q", wait_ready="false")
    config, wait = supervisor.launched[-1]
    assert config.source == "Qwen/Qwen2.5-7B-Instruct-AWQ" and config.quantization == "awq"
    assert config.engine == "vllm" and wait is False
    assert 151645 in config.stop_token_ids
    call(handlers, "models.launch", model_name="qwen2.5-instruct", model_size_in_billions=0.5, model_uid="h")
    assert supervisor.launched[-1][0].source == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(InvalidRequest, match="offers"):
        call(handlers, "models.launch", model_name="qwen2.5-instruct", model_size_in_billions=9)


def test_launch_custom_registration_and_describe(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, supervisor, weights = env
    spec = {**LLM["model_specs"][0], "model_uri": f"file://{weights}"}
    model = _with(LLM, model_name="mine", model_ability=["chat", "reasoning", "hybrid"], model_specs=[spec],
                  reasoning_start_tag="<think>", reasoning_end_tag="</think>")
    call(handlers, "registrations.register", model_type="LLM", model=model, persist=False)
    assert call(handlers, "models.launch", model_name="mine", model_uid="m1") == {"model_uid": "m1"}
    config = supervisor.launched[-1][0]
    assert config.source == f"file://{weights}" and config.thinking_variable == "enable_thinking"
    described = call(handlers, "models.get", uid="m1")
    assert described["model_type"] == "LLM" and "chat" in described["model_ability"]
    assert described["model_family"] == "my-custom-qwen-2.5" and described["model_format"] == "pytorch"
    assert call(handlers, "models.progress", uid="m1") == {"progress": 1.0}
    [instance] = call(handlers, "models.instances", model_uid="m1")
    assert instance["status"] == "READY" and instance["model_name"] == "mine"
    assert call(handlers, "models.instances", model_name="other") == []
    assert set(call(handlers, "models.list")) == {"m1"}
    for method in ("models.get", "models.progress"):
        with pytest.raises(NotFound):
            call(handlers, method, uid="nope")


def test_launch_embedding(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, supervisor, weights = env
    spec = {**EMBEDDING["model_specs"][0], "model_uri": str(weights)}
    call(handlers, "registrations.register", model_type="embedding",
         model=_with(EMBEDDING, model_specs=[spec]), persist=False)
    call(handlers, "models.launch", model_name="my-bge", model_type="embedding", model_uid="e")
    config = supervisor.launched[-1][0]
    assert config.model_type == "embedding" and config.abilities == ["embed"] and config.dimensions == 1024
    described = call(handlers, "models.get", uid="e")
    assert described["model_type"] == "embedding" and described["dimensions"] == 1024


@pytest.mark.parametrize(("body", "error", "match"), [
    ({"model_name": "no-such-model"}, NotFound, "no-such-model"),
    ({"model_name": "qwen3", "model_type": "video"}, InvalidRequest, "model_type"),
    ({"model_name": "qwen3", "model_type": "embedding"}, NotFound, "qwen3"),
    ({}, InvalidRequest, "model_name"),
    ({"model_name": "qwen3", "model_engine": "SGLang"}, InvalidRequest, "model_engine"),
    ({"model_name": "qwen3", "model_uid": "bad uid/x"}, InvalidRequest, "model_uid"),
    ({"model_name": "qwen3", "model_path": "/definitely/missing"}, WeightsNotFound, "/definitely/missing"),
    ({"model_name": "qwen3", "replica": 0}, InvalidRequest, "replica"),
    ({"model_name": "qwen3", "replica": "2"}, InvalidRequest, "replica"),
    ({"model_name": "qwen3", "ray_resources": {"a": -1}}, InvalidRequest, "ray_resources"),
    ({"model_name": "qwen3", "n_cpu": 0}, InvalidRequest, "n_cpu"),
    ({"model_name": "qwen3", "n_worker": 2, "model_engine": "transformers"}, InvalidRequest, "needs model_engine vllm"),
    ({"model_name": "qwen3", "n_worker": 0}, InvalidRequest, "n_worker"),
    ({"model_name": "qwen3", "n_gpu": 0}, InvalidRequest, "n_gpu"),
    ({"model_name": "qwen3", "peft_model_config": {"lora_list": [{"lora_name": "../x", "local_path": "/a"}]}},
     InvalidRequest, "no paths"),
    ({"model_name": "qwen3", "peft_model_config": {"lora_list": [{"lora_name": "x"}]}}, InvalidRequest,
     "local_path"),
    ({"model_name": "qwen3", "peft_model_config": "x"}, InvalidRequest, "peft_model_config"),
    ({"model_name": "qwen3", "wait_ready": "maybe"}, InvalidRequest, "wait_ready"),
    ({"model_name": "llama-3.1-instruct", "enable_thinking": True}, InvalidRequest, "does not reason"),
    ({"model_name": "deepseek-r1-distill-qwen", "enable_thinking": False}, InvalidRequest, "always thinks"),
])
def test_launch_errors(env: tuple[dict[str, Any], FakeSupervisor, Path], body: dict[str, Any],
                       error: type[Exception], match: str) -> None:
    handlers, supervisor, _ = env
    with pytest.raises(error, match=match):
        call(handlers, "models.launch", **body)
    assert supervisor.launched == []


def test_launch_checks_the_chat_template_of_local_weights(env: tuple[dict[str, Any], FakeSupervisor, Path],
                                                          tmp_path: Path) -> None:
    handlers, _, _ = env
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(InvalidRequest, match="chat_template"):
        call(handlers, "models.launch", model_name="llama-3.2-instruct", model_path=str(bare))


def test_registration_handlers(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, _, _ = env
    brief = call(handlers, "registrations.list", model_type="LLM", detailed=False)
    assert {"model_name": "qwen3", "is_builtin": True} in brief
    detailed = call(handlers, "registrations.list", model_type="LLM", detailed="true")
    assert all("model_specs" in r for r in detailed)
    result = call(handlers, "registrations.register", model_type="LLM", model=json.dumps(LLM), persist=True)
    assert result["model_name"] == "custom-qwen-2_5"
    got = call(handlers, "registrations.get", model_type="LLM", name="custom-qwen-2_5")
    assert got["is_builtin"] is False and got["model_specs"][0]["model_size_in_billions"] == "0_5"
    with pytest.raises(InvalidRequest, match="string"):
        call(handlers, "registrations.register", model_type="LLM", model={"a": 1}, persist=False)
    call(handlers, "registrations.unregister", model_type="LLM", name="custom-qwen-2_5")
    with pytest.raises(NotFound):
        call(handlers, "registrations.get", model_type="LLM", name="custom-qwen-2_5")


def test_enrich_default_config_from_the_catalog(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    config = ModelLaunchConfig(uid="d", source="Qwen/Qwen3-8B", model_name="Qwen/Qwen3-8B", is_default=True)
    enriched = enrich_default_config(config, settings)
    assert enriched.reasoning_start_tag == "<think>" and enriched.thinking_variable == "enable_thinking"
    other = ModelLaunchConfig(uid="d", source="/some/dir", model_name="x")
    assert enrich_default_config(other, settings) == other


def test_model_roots_limit_where_local_weights_come_from(tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    inside = allowed / "qwen"
    outside = tmp_path / "elsewhere"
    for folder in (inside, outside):
        folder.mkdir(parents=True)
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }} enable_thinking"}))
    (allowed / "sneaky").symlink_to(outside)
    settings = Settings(home=tmp_path / "home", model_roots=(allowed,))
    supervisor = FakeSupervisor(settings)
    handlers = control_handlers(settings, supervisor)
    assert call(handlers, "models.launch", model_name="qwen3", model_path=str(inside))["model_uid"]
    for path in (str(outside), f"file://{outside}", str(inside / ".." / ".." / "elsewhere"), str(allowed / "sneaky")):
        with pytest.raises(InvalidRequest, match="BERTH_MODEL_ROOTS") as caught:
            call(handlers, "models.launch", model_name="qwen3", model_path=path)
        assert caught.value.param == "model_path"
    # From the environment: a PATH-like list.
    assert Settings.from_env({"BERTH_MODEL_ROOTS": f"{allowed}:/opt/ml/model"}).model_roots == (allowed,
                                                                                              Path("/opt/ml/model"))


def test_launch_with_replicas_and_placement_keys(env: tuple[dict[str, Any], FakeSupervisor, Path]) -> None:
    handlers, supervisor, weights = env
    call(handlers, "models.launch", model_name="qwen3", model_path=str(weights), model_uid="r", replica=3, n_gpu=2,
         n_cpu=4, ray_resources={"berth_a": 1})
    config, _ = supervisor.launched[-1]
    assert (config.replica, config.n_gpu, config.n_cpu, config.ray_resources) == (3, 2, 4.0, {"berth_a": 1.0})
    from berth_server.launch_config import ReplicaInfo

    supervisor._statuses["r"] = ModelStatus(uid="r", state="ready", replicas=[
        ReplicaInfo(index=i, state="ready", pid=100 + i, node="local") for i in range(3)])
    described = call(handlers, "models.get", uid="r")
    assert described["replica"] == 3
    assert described["replicas"] == [{"index": i, "node": "local", "state": "ready", "pid": 100 + i} for i in range(3)]
    assert call(handlers, "models.instances", model_uid="r")[0]["replica"] == 3
