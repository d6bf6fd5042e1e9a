"""The docker target: a clear, immediate failure without an engine; the container it would run."""

from __future__ import annotations

import time
from pathlib import Path

import berth
import pytest
from berth.docker_target import container_options
from berth.errors import DockerUnavailableError


def test_no_docker_engine_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    start = time.monotonic()
    with pytest.raises(DockerUnavailableError, match="no Docker engine is reachable"):
        berth.deploy(target="docker", model="org/m", image="berth:cpu")
    assert time.monotonic() - start < 10


def test_container_options_mount_weights_and_request_gpus(tmp_path: Path) -> None:
    options = container_options(tmp_path, "berth:gpu", 9000, "all", {"MAX_TOTAL_TOKENS": "2048"})
    assert options["command"] == "serve"
    assert options["environment"] == {"HF_MODEL_ID": "/opt/ml/model", "MAX_TOTAL_TOKENS": "2048", "SM_NUM_GPUS": "1"}
    assert options["volumes"] == {str(tmp_path.resolve()): {"bind": "/opt/ml/model", "mode": "ro"}}
    assert options["ports"] == {"8080/tcp": ("127.0.0.1", 9000)}
    [request] = options["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    hub = container_options("org/m", "berth:cpu", 9000, None, None)
    assert hub["environment"] == {"HF_MODEL_ID": "org/m"} and "device_requests" not in hub and not hub["volumes"]


def test_unknown_target() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        berth.deploy(target="k8s", model="m")  # type: ignore[arg-type]


class _FakeContainer:
    """What deploy_docker uses of docker's Container."""

    def __init__(self, status: str) -> None:
        self.status, self.name, self.short_id = status, "berth-test", "abc123"
        self.calls: list[str] = []

    def reload(self) -> None:
        self.calls.append("reload")

    def logs(self, tail: int | None = None) -> bytes:
        return b"model failed to load\n"

    def stop(self, timeout: int) -> None:
        self.calls.append(f"stop({timeout})")

    def remove(self, force: bool = False) -> None:
        self.calls.append(f"remove(force={force})")


class _FakeClient:
    def __init__(self, container: _FakeContainer) -> None:
        self.container, self.run_kwargs = container, {}
        self.containers = self

    def run(self, **kwargs: object) -> _FakeContainer:
        self.run_kwargs = kwargs
        return self.container


def test_container_that_exits_fails_with_its_logs_and_is_removed() -> None:
    from berth.docker_target import deploy_docker
    from berth.errors import DeployError

    container = _FakeContainer("exited")
    with pytest.raises(DeployError, match="model failed to load"):
        deploy_docker("org/m", "berth:cpu", client=_FakeClient(container), startup_timeout_s=10)
    assert container.calls[-1] == "remove(force=True)"


def test_ready_container_predicts_and_delete_stops_it() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from berth.docker_target import deploy_docker

    class _Berth(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps([{"generated_text": "ok"}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Berth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    container = _FakeContainer("running")
    client = _FakeClient(container)
    try:
        predictor = deploy_docker("org/m", "berth:cpu", port=server.server_address[1], client=client,
                                  startup_timeout_s=10)
        assert client.run_kwargs["command"] == "serve"
        assert predictor.predict({"inputs": "x"}) == [{"generated_text": "ok"}]
        assert "model failed" in predictor.logs()
        predictor.delete()
        assert container.calls[-2:] == ["stop(30)", "remove(force=False)"]
    finally:
        server.shutdown()
        server.server_close()


def test_sagemaker_predictor_needs_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from berth.errors import BerthError
    from berth.predictor import RuntimePredictor

    # None in sys.modules makes an import fail; submodules imported by earlier tests must be hidden too.
    for name in [m for m in sys.modules if m == "sagemaker" or m.startswith("sagemaker.")] + ["sagemaker"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BerthError, match=r"pip install 'berth\[sagemaker\]'"):
        RuntimePredictor("ep", object()).sagemaker_predictor()
