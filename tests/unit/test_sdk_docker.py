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
