"""The real xinference-client 4.1.0 (and the `berth` CLI) against a real `serve`: registrations, launch, chat,
reasoning, terminate, persistence across a restart, and every bad input with its 4xx and "detail"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from xinference_client import RESTfulClient

from .conftest import RunningServer, launch_serve

ENGINE = "transformers"


def llm_registration(name: str, model_dir: Path, **extra: Any) -> dict[str, Any]:
    """Xinference's version-2 LLM JSON pointing at a local demo model."""
    return {
        "version": 2, "context_length": 2048, "model_name": name, "model_lang": ["en"],
        "model_ability": ["chat", "generate"], "model_description": "a tiny demo model",
        "model_family": f"{name}-family",
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                         "model_id": None, "model_hub": "huggingface", "model_uri": f"file://{model_dir}",
                         "model_revision": None}],
        "chat_template": None, "stop_token_ids": None, "stop": None, "reasoning_start_tag": None,
        "reasoning_end_tag": None, "cache_config": None, "virtualenv": {"packages": []}, "is_builtin": False,
        **extra,
    }


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of our own: the restart test reuses its BERTH_HOME."""
    running = launch_serve(tiny_model, tmp_path_factory.mktemp("xinference"), engine=ENGINE,
                           env={"BERTH_MODEL_UID": "tiny"})
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> RESTfulClient:
    return RESTfulClient(server.base_url)


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_register_launch_chat_generate_terminate(client: RESTfulClient, server: RunningServer,
                                                 tiny_model: Path) -> None:
    psutil = pytest.importorskip("psutil")
    builtins = {r["model_name"] for r in client.list_model_registrations("LLM")}
    assert {"qwen3", "llama-3.1-instruct", "deepseek-r1-distill-qwen"} <= builtins
    client.register_model("LLM", json.dumps(llm_registration("xc-tiny", tiny_model)), persist=False)
    detailed = client.list_model_registrations("LLM", detailed=True)
    assert any(r["model_name"] == "xc-tiny" and not r["is_builtin"] for r in detailed)
    assert client.get_model_registration("LLM", "xc-tiny")["model_family"] == "xc-tiny-family"

    uid = client.launch_model("xc-tiny", model_engine="Transformers", model_uid="xc-1")
    assert uid == "xc-1" and "xc-1" in client.list_models()
    assert client.get_launch_model_progress(uid) == {"progress": 1.0}
    assert client.get_instance_info("xc-tiny", uid)[0]["status"] == "READY"
    model = client.get_model(uid)
    messages = [{"role": "user", "content": "hello"}]
    reply = model.chat(messages=messages, generate_config={"max_tokens": 6})
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] == 6
    chunks = list(model.chat(messages=messages, generate_config={"max_tokens": 6, "stream": True}))
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert model.generate("once upon", generate_config={"max_tokens": 4})["usage"]["completion_tokens"] == 4

    described = client.describe_model(uid)
    assert described["model_type"] == "LLM" and described["model_engine"] == "transformers"
    process = psutil.Process(described["pid"])
    rss_before = process.memory_info().rss
    client.terminate_model(uid)
    assert _gone(described["pid"]), "the model process did not exit"
    print(f"terminate freed the model process: RSS {rss_before / 2**20:.0f} MiB -> process gone")
    with pytest.raises(RuntimeError, match="not found"):
        client.describe_model(uid)
    client.unregister_model("LLM", "xc-tiny")
    assert "xc-tiny" not in {r["model_name"] for r in client.list_model_registrations("LLM")}


def test_reasoning_with_enable_thinking(client: RESTfulClient, tiny_reasoning_model: Path) -> None:
    registration = llm_registration("xc-think", tiny_reasoning_model,
                                    model_ability=["chat", "generate", "reasoning", "hybrid"],
                                    reasoning_start_tag="<think>", reasoning_end_tag="</think>")
    client.register_model("LLM", json.dumps(registration), persist=False)
    uid = client.launch_model("xc-think", model_engine="transformers")
    try:
        model = client.get_model(uid)
        messages = [{"role": "user", "content": "why?"}]
        thinking = model.chat(messages=messages, generate_config={"max_tokens": 12}, enable_thinking=True)
        message = thinking["choices"][0]["message"]
        assert message.get("reasoning_content")  # the template opened <think>: output starts as reasoning
        quiet = model.chat(messages=messages, generate_config={"max_tokens": 12}, enable_thinking=False)
        assert not quiet["choices"][0]["message"].get("reasoning_content")
        assert quiet["choices"][0]["message"]["content"]
        streamed = list(model.chat(messages=messages, enable_thinking=True,
                                   generate_config={"max_tokens": 8, "stream": True}))
        assert any(c["choices"][0]["delta"].get("reasoning_content") for c in streamed if c["choices"])
        for text in (json.dumps(thinking), json.dumps(quiet), json.dumps(streamed)):
            assert "<think>" not in text and "</think>" not in text
    finally:
        client.terminate_model(uid)
        client.unregister_model("LLM", "xc-think")


def _detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["detail"])


def test_bad_inputs_get_4xx_with_detail(client: RESTfulClient, server: RunningServer, tiny_model: Path,
                                        tmp_path: Path) -> None:
    url = server.url
    post = lambda path, body: httpx.post(url(path), json=body, timeout=60)
    assert "nope" in _detail(post("/v1/models", {"model_name": "nope"}), 404)
    assert "not valid JSON" in _detail(post("/v1/model_registrations/LLM", {"model": "{oops"}), 400)
    bad_name = json.dumps(llm_registration("bad name!", tiny_model))
    assert "model_name" in _detail(post("/v1/model_registrations/LLM", {"model": bad_name}), 400)
    shadow = json.dumps(llm_registration("qwen3", tiny_model))
    assert "built-in" in _detail(post("/v1/model_registrations/LLM", {"model": shadow}), 409)
    missing = str(tmp_path / "no-weights")
    assert missing in _detail(post("/v1/models", {"model_name": "qwen3", "model_path": missing}), 400)
    assert "tiny" in _detail(post("/v1/models", {"model_name": "llama-3.2-instruct", "model_path": str(tiny_model),
                                                 "model_uid": "tiny"}), 409)
    assert _detail(httpx.get(url("/v1/models/ghost"), timeout=10), 404)
    assert _detail(httpx.delete(url("/v1/models/ghost"), timeout=10), 404)
    assert _detail(httpx.get(url("/v1/models/ghost/progress"), timeout=10), 404)
    assert _detail(httpx.delete(url("/v1/model_registrations/LLM/ghost"), timeout=10), 404)
    # s3 weights that do not exist: the launch fails fast, naming the URI.
    s3 = llm_registration("xc-s3", tiny_model)
    s3["model_specs"][0]["model_uri"] = "s3://berth-no-such-bucket/model/"
    client.register_model("LLM", json.dumps(s3), persist=False)
    try:
        launched = post("/v1/models", {"model_name": "xc-s3", "model_engine": "transformers",
                                       "model_uid": "xc-s3"})
        assert launched.status_code in (400, 422) and "s3://berth-no-such-bucket/model/" in launched.json()["detail"]
    finally:
        client.unregister_model("LLM", "xc-s3")
    with pytest.raises(RuntimeError, match="nope"):
        client.launch_model("nope")


def test_launch_builtin_family_from_model_path(client: RESTfulClient, tiny_model: Path) -> None:
    uid = client.launch_model("llama-3.2-instruct", model_engine="transformers", model_path=str(tiny_model),
                              model_uid="from-path")
    try:
        described = client.describe_model(uid)
        assert described["model_name"] == "llama-3.2-instruct" and "tools" in described["model_ability"]
        reply = client.get_model(uid).chat(messages=[{"role": "user", "content": "hi"}],
                                           generate_config={"max_tokens": 3})
        assert reply["usage"]["completion_tokens"] <= 3
    finally:
        client.terminate_model(uid)


def test_cli_mirrors_xinference(server: RunningServer, tiny_model: Path, tmp_path: Path) -> None:
    from berth.cli import main

    runner = CliRunner()
    endpoint = ["--endpoint", server.base_url]
    listed = runner.invoke(main, ["registrations", "--model-type", "LLM", *endpoint])
    assert listed.exit_code == 0 and "qwen3" in listed.output
    spec = tmp_path / "model.json"
    spec.write_text(json.dumps(llm_registration("cli-tiny", tiny_model)))
    assert runner.invoke(main, ["register", "--model-type", "LLM", "--file", str(spec), *endpoint]).exit_code == 0
    launched = runner.invoke(main, ["launch", "--model-name", "cli-tiny", "--model-engine", "transformers",
                                    "--model-uid", "cli-1", *endpoint])
    assert launched.exit_code == 0 and "cli-1" in launched.output, launched.output
    assert "cli-1" in runner.invoke(main, ["list", *endpoint]).output
    generated = runner.invoke(main, ["generate", "--model-uid", "cli-1", "--prompt", "hi", "--max-tokens", "3",
                                     *endpoint])
    assert generated.exit_code == 0 and generated.output.strip()
    chatted = runner.invoke(main, ["chat", "--model-uid", "cli-1", "--max-tokens", "3", *endpoint],
                            input="hello\nagain\n\n")
    assert chatted.exit_code == 0 and chatted.output.count("Assistant:") == 2
    assert runner.invoke(main, ["terminate", "--model-uid", "cli-1", *endpoint]).exit_code == 0
    assert runner.invoke(main, ["unregister", "--model-type", "LLM", "--model-name", "cli-tiny",
                                *endpoint]).exit_code == 0
    failed = runner.invoke(main, ["launch", "--model-name", "ghost", *endpoint])
    assert failed.exit_code != 0 and "ghost" in failed.output and "Traceback" not in failed.output
    assert len([line for line in failed.output.splitlines() if line.strip()]) == 1


def test_persisted_registration_survives_restart(tiny_model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = launch_serve(tiny_model, home, engine=ENGINE, env={"BERTH_MODEL_UID": "tiny"})
    try:
        RESTfulClient(first.base_url).register_model(
            "LLM", json.dumps(llm_registration("kept", tiny_model)), persist=True)
    finally:
        assert first.stop() == 0
    second = launch_serve(tiny_model, home, engine=ENGINE, env={"BERTH_MODEL_UID": "tiny"})
    try:
        client = RESTfulClient(second.base_url)
        assert client.get_model_registration("LLM", "kept")["model_family"] == "kept-family"
        client.unregister_model("LLM", "kept")
        assert not (home / "registrations" / "LLM" / "kept.json").exists()
    finally:
        second.stop()
