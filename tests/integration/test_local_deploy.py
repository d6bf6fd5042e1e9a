"""berth.deploy(target="local") for real: the SDK starts `serve`, fronts it with SageMaker's runtime API, stops it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import berth
import boto3
import httpx
import pytest
from berth.cli import main
from berth.local_target import LocalPredictor, free_port
from berth.streaming import iter_events
from botocore.exceptions import ClientError
from click.testing import CliRunner

CHAT = {"messages": [{"role": "user", "content": "Say something"}], "max_tokens": 8, "temperature": 0}
TGI = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 8, "do_sample": False}}
ENV = {"BERTH_ENGINE": "transformers", "HF_HUB_OFFLINE": "1", "BERTH_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def local(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPredictor]:
    predictor = berth.deploy(target="local", model=tiny_model, port=free_port(), endpoint_name="berth-tiny",
                             env=ENV, home=tmp_path_factory.mktemp("local-deploy"), startup_timeout_s=180)
    assert isinstance(predictor, LocalPredictor)
    yield predictor
    predictor.delete()


@pytest.fixture
def runtime(local: LocalPredictor):
    return boto3.client("sagemaker-runtime", endpoint_url=local.runtime_endpoint_url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def _chat_text(events: list[dict]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])


def test_predict_and_stream_agree_under_greedy(local: LocalPredictor) -> None:
    reply = local.predict(CHAT)
    text = reply["choices"][0]["message"]["content"]
    assert text and reply["usage"]["completion_tokens"] > 0
    events = list(local.predict_stream(CHAT))
    assert len(events) > 1
    assert _chat_text(events) == text


def test_tgi_body_stream_matches_generate(local: LocalPredictor) -> None:
    [generated] = local.predict(TGI)
    events = list(local.predict_stream(TGI))
    assert events[-1]["generated_text"] == generated["generated_text"]
    assert "".join(e["token"]["text"] for e in events if not e["token"].get("special")) == generated["generated_text"]


def test_boto3_invoke_endpoint_and_stream(local: LocalPredictor, runtime) -> None:
    direct = local.predict(CHAT)["choices"][0]["message"]["content"]
    reply = runtime.invoke_endpoint(EndpointName=local.endpoint_name, Body=json.dumps(CHAT),
                                    ContentType="application/json")
    assert json.loads(reply["Body"].read())["choices"][0]["message"]["content"] == direct
    streamed = runtime.invoke_endpoint_with_response_stream(
        EndpointName=local.endpoint_name, Body=json.dumps({**CHAT, "stream": True}), ContentType="application/json")
    parts = [event["PayloadPart"]["Bytes"] for event in streamed["Body"]]
    assert len(parts) > 1
    assert _chat_text(list(iter_events(parts))) == direct


def test_container_error_maps_to_model_error(local: LocalPredictor, runtime) -> None:
    with pytest.raises(ClientError) as info:
        runtime.invoke_endpoint(EndpointName=local.endpoint_name, Body=b'{"messages": "not a list"}',
                                ContentType="application/json")
    error = info.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert 400 <= error["OriginalStatusCode"] < 500


def test_sagemaker_sdk_predictor_and_cli_invoke(local: LocalPredictor) -> None:
    pytest.importorskip("sagemaker")
    official = local.sagemaker_predictor()
    assert official.predict(CHAT)["choices"][0]["message"]["content"] == local.predict(CHAT)["choices"][0]["message"]["content"]
    result = CliRunner().invoke(main, ["invoke", local.endpoint_name, "--body", json.dumps(CHAT), "--stream",
                                       "--endpoint-url", local.runtime_endpoint_url, "--region", "us-east-1"],
                                env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert _chat_text(lines) == local.predict(CHAT)["choices"][0]["message"]["content"]


def test_image_contract_and_delete_stops_the_process(tiny_model: Path, tmp_path: Path) -> None:
    """As the image runs: no HF_MODEL_ID, weights in the SageMaker model dir, SAGEMAKER_BIND_TO_PORT."""
    port = free_port()
    predictor = berth.deploy(target="local", model=None, port=port, env={
        **ENV, "BERTH_SAGEMAKER_MODEL_DIR": str(tiny_model), "SAGEMAKER_BIND_TO_PORT": str(port)},
        home=tmp_path, startup_timeout_s=180)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200
        assert predictor.predict(TGI)[0]["generated_text"]
    finally:
        predictor.delete()
    assert predictor.process.returncode is not None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2)
    assert "Traceback" not in predictor.logs()


def test_register_model_with_a_running_berth(local: LocalPredictor) -> None:
    """register_model posts the v2 JSON as xinference-client does; the server stores and lists it."""
    registration = berth.register_model("sdk-custom-0_5b", "s3://weights/sdk-custom/", berth_url=local.base_url,
                                        persist=False, chat_template="{{ messages }}", context_length=1024)
    stored = httpx.get(f"{local.base_url}/v1/model_registrations/LLM/sdk-custom-0_5b", timeout=10)
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert body["model_specs"][0]["model_uri"] == registration["model_specs"][0]["model_uri"]
    assert body["context_length"] == 1024
    with pytest.raises(berth.BerthError, match="HTTP 4"):
        berth.register_model("sdk-custom-0_5b", "org/other", berth_url=local.base_url, persist=False,
                             extra={"model_family": "qwen2.5-instruct"})
    deleted = httpx.delete(f"{local.base_url}/v1/model_registrations/LLM/sdk-custom-0_5b", timeout=10)
    assert deleted.status_code == 200, deleted.text
