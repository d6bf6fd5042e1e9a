"""Adapter selection through every protocol and SageMaker's /adapters routes, with a fake gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from berth_server.adapter_specs import AdapterSource, from_peft_model_config, parse_lora_adapters
from berth_server.http.app import create_app
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeGateway
from tests.unit.test_tgi_fakes import tgi_gateway

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def gateway() -> FakeGateway:
    gateway = tgi_gateway()
    gateway.add_adapter("tiny", AdapterSource(name="fr", src="/adapters/fr"))
    return gateway


@pytest.fixture
def client(gateway: FakeGateway, tmp_path: Path) -> FlaskClient:
    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=gateway, control=object())
    return app.test_client()


@pytest.mark.parametrize("body", [CHAT, {"prompt": "hi", "max_tokens": 2},
                                  {"inputs": "hi", "parameters": {"max_new_tokens": 2}},
                                  {"inputs": ["a", "b"], "parameters": {"adapter_id": "other"}}])
@pytest.mark.parametrize("header", ["X-Amzn-SageMaker-Adapter-Identifier", "X-Amzn-SageMaker-Adapter-Alias"])
def test_the_adapter_header_selects_whatever_the_body(client: FlaskClient, gateway: FakeGateway,
                                                      body: dict[str, Any], header: str) -> None:
    reply = client.post("/invocations", json=body, headers={header: "fr"})
    assert reply.status_code == 200, reply.json
    assert gateway.requests and all(r.adapter == "fr" and r.model == "tiny" for r in gateway.requests)


def test_without_the_header_the_base_model_answers(client: FlaskClient, gateway: FakeGateway) -> None:
    assert client.post("/invocations", json=CHAT).status_code == 200
    assert gateway.requests[-1].adapter is None


def test_openai_model_names_an_adapter_and_lora_name_picks_one(client: FlaskClient, gateway: FakeGateway) -> None:
    reply = client.post("/v1/chat/completions", json={**CHAT, "model": "fr"})
    assert reply.status_code == 200 and reply.json["model"] == "fr"
    assert gateway.requests[-1].adapter == "fr" and gateway.requests[-1].model == "tiny"
    assert client.post("/v1/completions", json={"prompt": "x", "lora_name": "fr"}).status_code == 200
    assert gateway.requests[-1].adapter == "fr"
    missing = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json["error"]["message"]


@pytest.mark.parametrize("path", ["/", "/generate", "/generate_stream"])
def test_tgi_adapter_id(client: FlaskClient, gateway: FakeGateway, path: str) -> None:
    reply = client.post(path, json={"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "fr"},
                                    "stream": path == "/generate_stream"})
    assert reply.status_code == 200
    assert gateway.requests[-1].adapter == "fr"


def test_register_list_and_remove(client: FlaskClient, gateway: FakeGateway) -> None:
    reply = client.post("/adapters", json={"name": "de", "src": "s3://bucket/de/", "preload": True, "pin": True})
    assert reply.status_code == 200 and reply.get_data(as_text=True) == "Adapter de registered"
    listed = client.get("/adapters").json
    assert {a["name"]: a["pinned"] for a in listed} == {"fr": False, "de": True}
    reply = client.post("/adapters?name=es&src=/adapters/es")  # the standard also takes query parameters
    assert reply.status_code == 200 and "es" in {a["name"] for a in client.get("/adapters").json}
    assert client.delete("/adapters/de").get_data(as_text=True) == "Adapter de unregistered"
    gone = client.delete("/adapters/de")
    assert gone.status_code == 404 and "de" in gone.json["error"]


@pytest.mark.parametrize("body", [{"name": "../etc", "src": "/x"}, {"name": "a/b", "src": "/x"}, {"src": "/x"},
                                  {"name": "ok"}])
def test_bad_registrations_are_4xx_naming_the_field(client: FlaskClient, body: dict[str, Any]) -> None:
    reply = client.post("/adapters", json=body)
    assert 400 <= reply.status_code < 500
    assert ("name" in reply.json["error"]) or ("src" in reply.json["error"])


def test_v1_models_lists_adapters_with_their_parent(tmp_path: Path) -> None:
    gateway = FakeGateway()
    gateway.add_adapter("default", AdapterSource(name="fr", src="/adapters/fr"))
    app = create_app(Settings(runtime_dir=tmp_path), gateway=gateway, control=object())
    data = app.test_client().get("/v1/models").json["data"]
    assert {(m["id"], m.get("parent")) for m in data} == {("default", None), ("fr", "default")}


def test_launch_lists() -> None:
    assert parse_lora_adapters("fr=/a/fr, s3://b/x/de.tar.gz ,org/es") == (
        AdapterSource(name="fr", src="/a/fr"), AdapterSource(name="de", src="s3://b/x/de.tar.gz"),
        AdapterSource(name="es", src="org/es"))
    assert from_peft_model_config({"lora_list": [{"lora_name": "fr", "local_path": "/a"}], "image_lora_load_kwargs": {}}
                                  ) == [AdapterSource(name="fr", src="/a")]


def test_lora_settings_honour_sagemaker_and_lmi_names() -> None:
    from berth_server.engines.vllm_lora import lora_kwargs, lora_wanted
    from berth_server.launch_config import ModelLaunchConfig
    from berth_server.settings import Settings, SettingsError

    settings = Settings.from_env({"SM_VLLM_ENABLE_LORA": "true", "SM_VLLM_MAX_LORA_RANK": "64",
                                  "OPTION_MAX_LORAS": "2", "SM_VLLM_MAX_CPU_LORAS": "8"})
    assert (settings.lora.enabled, settings.lora.max_lora_rank, settings.lora.max_loras,
            settings.lora.max_cpu_loras) == (True, 64, 2, 8)
    assert lora_kwargs(settings) == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 64, "max_cpu_loras": 8}
    assert Settings.from_env(settings.to_env()).lora == settings.lora
    plain = Settings.from_env({})
    config = ModelLaunchConfig(uid="m", source="/m", model_name="m", is_default=True)
    assert not lora_wanted(config, plain)
    assert lora_wanted(config, Settings.from_env({"LORA_ADAPTERS": "fr=/a/fr"}))
    assert lora_wanted(ModelLaunchConfig(uid="x", source="/m", model_name="m",
                                         adapters=[AdapterSource(name="fr", src="/a")]), plain)
    assert lora_wanted(ModelLaunchConfig(uid="x", source="/m", model_name="m", engine_args={"enable_lora": True}),
                       plain)
    with pytest.raises(SettingsError, match="LORA_ADAPTERS"):
        Settings.from_env({"LORA_ADAPTERS": "../x=/a"})
