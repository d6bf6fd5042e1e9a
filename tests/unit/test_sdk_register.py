"""register_model: uploads a directory to S3 as a plain prefix, builds valid v2 JSON, posts it like xinference-client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import berth
import boto3
import pytest
from berth.errors import BerthError, ValidationError
from berth.register import build_registration, split_s3_uri
from moto import mock_aws

RECEIVED: list[dict] = []


class _Registrations(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        RECEIVED.append({"path": self.path, "body": body})
        status, reply = (400, {"detail": "model_name clashes"}) if "clash" in body["model"] else (200, {})
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def berth_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registrations)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return tmp_path


def test_upload_and_register(checkpoint: Path, berth_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="weights")
        reg = berth.register_model("my-llm-1_5b", checkpoint, s3_uri="s3://weights/custom/my-llm",
                                   berth_url=berth_url, persist=True, region="us-east-1")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="weights")["Contents"])
    assert keys == ["custom/my-llm/config.json", "custom/my-llm/sub/model.safetensors",
                    "custom/my-llm/tokenizer_config.json"]
    spec = reg["model_specs"][0]
    assert spec["model_uri"] == "s3://weights/custom/my-llm/" and spec["model_size_in_billions"] == "1_5"
    assert reg["chat_template"] == "{{ messages }}" and reg["model_ability"] == ["generate", "chat"]
    posted = RECEIVED[-1]
    assert posted["path"] == "/v1/model_registrations/LLM"
    assert posted["body"]["persist"] is True and json.loads(posted["body"]["model"]) == reg


def test_hub_id_registration_is_validated_without_server() -> None:
    reg = berth.register_model("tiny-hub", "org/Tiny-0.5B")
    assert reg["model_specs"][0]["model_id"] == "org/Tiny-0.5B"
    assert reg["model_specs"][0]["model_uri"] is None


def test_invalid_registration_and_rejection(berth_url: str, checkpoint: Path) -> None:
    with pytest.raises(ValidationError, match="model_name"):
        berth.register_model("bad name!", "org/m")
    with pytest.raises(ValidationError, match="s3_uri"):
        berth.register_model("m", checkpoint)
    with pytest.raises(BerthError, match="clashes"):
        berth.register_model("clash", "org/m", berth_url=berth_url)


def test_helpers() -> None:
    assert split_s3_uri("s3://b/p/q/") == ("b", "p/q/")
    assert split_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValidationError):
        split_s3_uri("https://b/p")
    assert build_registration("e", model_id="org/e", model_type="embedding", extra={"dimensions": 8})["dimensions"] == 8
