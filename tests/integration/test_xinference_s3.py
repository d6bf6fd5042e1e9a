"""Weights from S3 end to end (a moto server): the default model from an s3:// prefix, a custom model from an
s3://.../model.tar.gz, and a missing bucket that makes `serve` exit non-zero within seconds."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from xinference_client import RESTfulClient

from .conftest import RunningServer

AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str, tiny_model: Path) -> str:
    """Bucket `weights`: the tiny model under tiny/ and as jobs/tiny/model.tar.gz."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="weights")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted(tiny_model.iterdir()):
            client.upload_file(str(path), "weights", f"tiny/{path.name}")
            tar.add(path, arcname=path.name)
    client.put_object(Bucket="weights", Key="jobs/tiny/model.tar.gz", Body=archive.getvalue())
    return "weights"


def test_default_model_and_custom_tar_gz_from_s3(start_server: Callable[..., RunningServer], moto_endpoint: str,
                                                 bucket: str) -> None:
    env = {"BERTH_S3_ENDPOINT_URL": moto_endpoint, "BERTH_MODEL_UID": "s3-tiny", **AWS}
    server = start_server(f"s3://{bucket}/tiny/", env=env)
    assert "downloading" in server.logs() or "downloaded" in server.logs()  # progress is logged
    client = RESTfulClient(server.base_url)
    reply = client.get_model("s3-tiny").chat(messages=[{"role": "user", "content": "hi"}],
                                             generate_config={"max_tokens": 3})
    assert reply["usage"]["completion_tokens"] <= 3
    registration = {
        "version": 2, "context_length": 2048, "model_name": "tar-tiny", "model_ability": ["chat"],
        "model_family": "tar-tiny-family",
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                         "model_uri": f"s3://{bucket}/jobs/tiny/model.tar.gz"}],
    }
    client.register_model("LLM", json.dumps(registration), persist=False)
    uid = client.launch_model("tar-tiny", model_engine="transformers")
    assert client.describe_model(uid)["model_family"] == "tar-tiny-family"
    client.terminate_model(uid)
    assert (server.home / "cache" / "s3" / bucket / "jobs" / "tiny").is_dir()  # cached under BERTH_HOME


def test_missing_s3_default_model_exits_fast(start_server: Callable[..., RunningServer], moto_endpoint: str) -> None:
    env = {"BERTH_S3_ENDPOINT_URL": moto_endpoint, **AWS}
    started = time.monotonic()
    server = start_server("s3://no-such-bucket/model/", env=env, wait=False)
    code = server.process.wait(timeout=60)
    assert code != 0 and time.monotonic() - started < 60
    assert "s3://no-such-bucket/model/" in server.logs()
