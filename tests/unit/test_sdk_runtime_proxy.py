"""The local SageMaker runtime API, against a stand-in Berth: boto3's sagemaker-runtime client works unchanged."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import boto3
import pytest
from berth.predictor import RuntimePredictor
from berth.runtime_proxy import RuntimeServer
from botocore.exceptions import ClientError

SSE_EVENTS = [{"choices": [{"delta": {"content": f"tok{i} \u00e9"}}]} for i in range(5)]


class _FakeBerth(BaseHTTPRequestHandler):
    """Stand-in /invocations: JSON, chunked SSE (split mid-line), or a 400 error."""

    protocol_version = "HTTP/1.1"
    seen_headers: ClassVar[dict[str, str]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeBerth.seen_headers = dict(self.headers)
        if body.get("fail"):
            data = json.dumps({"error": "Input validation error", "error_type": "validation"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if body.get("stream"):
            raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in SSE_EVENTS) + b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(raw), 7):  # 7-byte chunks: boundaries fall inside lines
                piece = raw[start:start + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        data = json.dumps({"echo": body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def runtime() -> Iterator[RuntimeServer]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _FakeBerth)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    server = RuntimeServer("my-endpoint", f"http://127.0.0.1:{upstream.server_address[1]}").serve()
    yield server
    server.stop()
    upstream.shutdown()
    upstream.server_close()


@pytest.fixture
def client(runtime: RuntimeServer):
    return boto3.client("sagemaker-runtime", endpoint_url=runtime.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def test_invoke_endpoint(client) -> None:
    reply = client.invoke_endpoint(EndpointName="my-endpoint", Body=b'{"inputs": "hi"}', ContentType="application/json",
                                   CustomAttributes="trace=1")
    assert json.loads(reply["Body"].read()) == {"echo": {"inputs": "hi"}}
    assert reply["ContentType"] == "application/json"
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    assert _FakeBerth.seen_headers.get("X-Amzn-SageMaker-Custom-Attributes") == "trace=1"


def test_invoke_endpoint_with_response_stream(client) -> None:
    reply = client.invoke_endpoint_with_response_stream(EndpointName="my-endpoint", Body=b'{"stream": true}',
                                                        ContentType="application/json")
    raw = b"".join(event["PayloadPart"]["Bytes"] for event in reply["Body"])
    assert raw.count(b"data: ") == len(SSE_EVENTS) + 1
    assert reply["ContentType"] == "text/event-stream"


def test_runtime_predictor_streams_parsed_events(client) -> None:
    predictor = RuntimePredictor("my-endpoint", client)
    assert list(predictor.predict_stream({"messages": []})) == SSE_EVENTS
    assert predictor.predict({"x": 1}) == {"echo": {"x": 1}}


def test_container_error_is_model_error(client) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName="my-endpoint", Body=b'{"fail": true}', ContentType="application/json")
    error = info.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 400
    assert "Input validation error" in error["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint_with_response_stream(EndpointName="my-endpoint", Body=b'{"fail": true}')
    assert info.value.response["Error"]["Code"] == "ModelError"


def test_unknown_endpoint_is_validation_error(client) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint(EndpointName="other", Body=b"{}", ContentType="application/json")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "other" in info.value.response["Error"]["Message"]
