"""LoRA adapters on a real server (SmolLM2, transformers): every contract's output equals peft's greedy output."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from tests.integration.conftest import RunningServer, launch_serve

pytestmark = pytest.mark.timeout(1200)
N = 8
QUESTION = "What is the capital of France?"
PROMPT = "The best thing about Paris is"


@pytest.fixture(scope="module")
def tokenizer(smollm2_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_model)


@pytest.fixture(scope="module")
def server(smollm2_model: Path, smollm2_adapters: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    """alpha and bravo preloaded with TGI's LORA_ADAPTERS; three device slots for four adapters (the LRU)."""
    folders = smollm2_adapters.folders
    env = {"BERTH_MODEL_UID": "smol", "BERTH_MAX_LORAS": "3",
           "LORA_ADAPTERS": f"alpha={folders['alpha']},bravo={folders['bravo']}"}
    server = launch_serve(smollm2_model, tmp_path_factory.mktemp("lora"), env=env)
    yield server
    server.stop()


def _chat_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode([i for i in ids if i != tokenizer.eos_token_id], skip_special_tokens=True)


def _tgi(server: RunningServer, adapter: str | None, path: str = "/generate") -> httpx.Response:
    parameters: dict[str, Any] = {"max_new_tokens": N, "details": True}
    if adapter is not None:
        parameters["adapter_id"] = adapter
    return httpx.post(server.url(path), json={"inputs": PROMPT, "parameters": parameters}, timeout=300)


def _register(server: RunningServer, name: str, src: Path | str, **extra: Any) -> httpx.Response:
    return httpx.post(server.url("/adapters"), json={"name": name, "src": str(src), **extra}, timeout=300)


def test_sagemaker_register_and_header_equal_peft(server: RunningServer, smollm2_adapters: Any, tokenizer: Any,
                                                  tmp_path: Path) -> None:
    archive = tmp_path / "charlie.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in smollm2_adapters.folders["charlie"].iterdir():
            tar.add(item, arcname=item.name)
    assert _register(server, "charlie", archive).text == "Adapter charlie registered"
    assert _register(server, "delta", smollm2_adapters.folders["delta"], pin=True).status_code == 200
    listed = {a["name"]: a for a in httpx.get(server.url("/adapters")).json()}
    assert set(listed) == {"alpha", "bravo", "charlie", "delta"} and listed["delta"]["pinned"]
    ids = _chat_ids(tokenizer, QUESTION)
    names: list[str | None] = [None, "alpha", "bravo", "charlie", "delta"]

    def invoke(name: str | None) -> str:
        headers = {"X-Amzn-SageMaker-Adapter-Identifier": name} if name else {}
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": N, "temperature": 0}
        reply = httpx.post(server.url("/invocations"), json=body, headers=headers, timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(len(names)) as pool:  # base and four adapters in the same batch
        answers = list(pool.map(invoke, names))
    for name, answer in zip(names, answers, strict=True):
        assert answer == _text(tokenizer, smollm2_adapters.greedy(name, ids, N)), name
    assert len(set(answers)) == len(names)


def test_tgi_adapter_id_equals_peft_token_for_token(server: RunningServer, smollm2_adapters: Any,
                                                   tokenizer: Any) -> None:
    ids = tokenizer(PROMPT)["input_ids"]
    for name in (None, "alpha", "bravo"):
        reply = _tgi(server, name)
        assert reply.status_code == 200, reply.text
        got = [t["id"] for t in reply.json()["details"]["tokens"]]
        assert got == smollm2_adapters.greedy(name, ids, N), name
    stream = _tgi(server, "alpha", "/generate_stream")
    assert stream.status_code == 200 and _text(tokenizer, smollm2_adapters.greedy("alpha", ids, N)) in stream.text


def test_openai_model_is_the_adapter(server: RunningServer, smollm2_adapters: Any, tokenizer: Any) -> None:
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="x", max_retries=0)
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert models["bravo"]["parent"] == "smol" and models["smol"].get("parent") is None
    reply = client.chat.completions.create(model="bravo", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=N, temperature=0)
    assert reply.model == "bravo"
    ids = _chat_ids(tokenizer, QUESTION)
    assert reply.choices[0].message.content == _text(tokenizer, smollm2_adapters.greedy("bravo", ids, N))
    with pytest.raises(openai.NotFoundError, match="nobody"):
        client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}], max_tokens=2)


def test_delete_then_use_is_404(server: RunningServer, smollm2_adapters: Any) -> None:
    assert _register(server, "echo", smollm2_adapters.folders["alpha"]).status_code == 200
    assert _tgi(server, "echo").status_code == 200
    assert httpx.delete(server.url("/adapters/echo")).text == "Adapter echo unregistered"
    gone = _tgi(server, "echo")
    assert gone.status_code == 404 and "echo" in gone.json()["error"]
    header = {"X-Amzn-SageMaker-Adapter-Identifier": "echo"}
    invoked = httpx.post(server.url("/invocations"), json={"inputs": "hi"}, headers=header, timeout=60)
    assert invoked.status_code == 404 and "echo" in invoked.text
    assert httpx.delete(server.url("/adapters/echo")).status_code == 404


def test_bad_sources_are_4xx_naming_them(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name, src, why in [("missing", tmp_path / "nowhere", "nowhere"), ("empty", tmp_path / "empty",
                           "adapter_config.json"), ("a/b", tmp_path, "no paths")]:
        reply = _register(server, name, src)
        assert 400 <= reply.status_code < 500 and why in reply.text, reply.text


def test_xinference_peft_model_config_and_lora_name(server: RunningServer, smollm2_model: Path,
                                                    smollm2_adapters: Any, tokenizer: Any) -> None:
    client = RESTfulClient(server.base_url)
    lora_list = [{"lora_name": "xalpha", "local_path": str(smollm2_adapters.folders["alpha"])}]
    uid = client.launch_model("llama-3.2-instruct", model_engine="transformers", model_path=str(smollm2_model),
                              model_uid="xc-lora", peft_model_config={"lora_list": lora_list})
    try:
        model = client.get_model(uid)
        ids = tokenizer(PROMPT)["input_ids"]
        for lora, reference in (("xalpha", "alpha"), (None, None)):
            config: dict[str, Any] = {"max_tokens": N, "temperature": 0.0}
            if lora:
                config["lora_name"] = lora
            text = model.generate(PROMPT, generate_config=config)["choices"][0]["text"]  # type: ignore[index]
            assert text == _text(tokenizer, smollm2_adapters.greedy(reference, ids, N))
    finally:
        client.terminate_model(uid)


def test_sdk_and_cli_select_adapters(server: RunningServer, smollm2_adapters: Any, tokenizer: Any) -> None:
    import boto3
    from berth.cli import main
    from berth.predictor import HttpPredictor
    from berth.runtime_proxy import RuntimeServer
    from click.testing import CliRunner

    runner = CliRunner()
    endpoint = ["--endpoint", server.base_url]
    added = runner.invoke(main, ["adapters", "add", "foxtrot", str(smollm2_adapters.folders["alpha"]), *endpoint])
    assert added.exit_code == 0, added.output
    assert "foxtrot" in runner.invoke(main, ["adapters", "list", *endpoint]).output
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": N, "temperature": 0}
    expected = _text(tokenizer, smollm2_adapters.greedy("alpha", _chat_ids(tokenizer, QUESTION), N))
    predictor = HttpPredictor(server.base_url, "smol")
    assert predictor.predict(body, adapter="foxtrot")["choices"][0]["message"]["content"] == expected
    runtime_api = RuntimeServer("smol-endpoint", server.base_url).serve()  # the local target's runtime API
    try:
        runtime = boto3.client("sagemaker-runtime", endpoint_url=runtime_api.url, region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="x")
        reply = runtime.invoke_endpoint(EndpointName="smol-endpoint", InferenceComponentName="foxtrot",
                                        Body=json.dumps(body), ContentType="application/json")
        assert json.loads(reply["Body"].read())["choices"][0]["message"]["content"] == expected
    finally:
        runtime_api.stop()
    removed = runner.invoke(main, ["adapters", "remove", "foxtrot", *endpoint])
    assert removed.exit_code == 0 and "foxtrot" not in runner.invoke(main, ["adapters", "list", *endpoint]).output


def test_run_time_adapters_survive_restarts(smollm2_model: Path, smollm2_adapters: Any, tokenizer: Any,
                                            tmp_path: Path) -> None:
    # A model process that dies comes back with every adapter added at run time; a server restart on
    # the same BERTH_HOME brings back those added with persist, and only those.
    from tests.integration.test_openai_crash import model_process_pid

    folders = smollm2_adapters.folders
    ids = tokenizer(PROMPT)["input_ids"]

    def tokens(server: RunningServer, name: str) -> list[int]:
        reply = _tgi(server, name)
        assert reply.status_code == 200, reply.text
        return [t["id"] for t in reply.json()["details"]["tokens"]]

    first = launch_serve(smollm2_model, tmp_path, env={"BERTH_MODEL_UID": "smol"})
    try:
        assert _register(first, "alpha", folders["alpha"]).status_code == 200
        assert _register(first, "bravo", folders["bravo"], persist=True).status_code == 200
        os.kill(model_process_pid(first.process.pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and httpx.get(first.url("/ping")).status_code == 200:
            time.sleep(0.1)  # the launcher notices the death; then it restarts the model process
        first.wait_ready()
        assert {a["name"] for a in httpx.get(first.url("/adapters")).json()} == {"alpha", "bravo"}
        assert tokens(first, "alpha") == smollm2_adapters.greedy("alpha", ids, N)
    finally:
        first.stop()
    second = launch_serve(smollm2_model, tmp_path, env={"BERTH_MODEL_UID": "smol"})
    try:
        assert [a["name"] for a in httpx.get(second.url("/adapters")).json()] == ["bravo"]
        assert tokens(second, "bravo") == smollm2_adapters.greedy("bravo", ids, N)
        assert httpx.delete(second.url("/adapters/bravo")).status_code == 200
    finally:
        second.stop()
    third = launch_serve(smollm2_model, tmp_path, env={"BERTH_MODEL_UID": "smol"})
    try:  # removed adapters stay removed
        assert httpx.get(third.url("/adapters")).json() == []
    finally:
        third.stop()
