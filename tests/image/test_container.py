"""The built image keeps SageMaker's container contract: what it holds, the default real model, the llama.cpp
engine, SIGTERM drain, read-only weights, load failures, and weights from file:// and s3:// (a moto server)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.image import container
from tests.image.container import Container
from tests.integration.conftest import free_port

StartContainer = Callable[..., Container]
CHAT = {"messages": [{"role": "user", "content": "Tell me a story"}], "temperature": 0}
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
SIGTERM_GRACE_S = 30.0  # SageMaker (and `docker stop`) kill the container this long after SIGTERM

# Run inside the image: every requirement of berth[server,llamacpp] is installed at a matching
# version, vLLM is not (the CPU image), llama.cpp's engine and the SmolLM2 wheel are there, torch is
# the CPU build, and no pip configuration or package folder of the build machine stayed behind.
INSIDE = r"""
import importlib.metadata as md, importlib.util, json, os, subprocess, sys
from packaging.requirements import Requirement
problems = []
for line in md.distribution("berth").requires or []:
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("server", "llamacpp")):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        problems.append(f"missing {req}")
        continue
    if not req.specifier.contains(have, prereleases=True):
        problems.append(f"{req}: have {have}")
if importlib.util.find_spec("vllm") is not None:
    problems.append("vllm is installed in the CPU image")
import xllamacpp, torch
from berth_server.models.wheel_weights import smollm2_gguf_path
smollm2_gguf_path()
if not torch.__version__.endswith("+cpu"):
    problems.append(f"torch {torch.__version__} is not the CPU build")
config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
config = "".join(line for line in config.splitlines(keepends=True) if not line.startswith(":env:"))  # the image's ENV
if config.strip():
    problems.append(f"pip configuration left in the image: {config}")
# podman leaves the build's mount points behind, empty: only content would be the machine's.
for path in filter(os.path.exists, sys.argv[1:]):
    for root, _, files in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
        for name in files:
            if os.path.getsize(os.path.join(root, name)):
                problems.append(f"{os.path.join(root, name)} of the build machine is in the image")
print(json.dumps(problems))
"""


def _host_package_paths() -> list[str]:
    """Paths this machine's pip configuration names (what `make image` mounts into the build)."""
    listed = subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=False).stdout
    paths = ["/run/berth-build", "/etc/pip.conf", "/etc/xdg/pip", "/root/.config/pip"]
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] not in ("find-links", "index-url", "extra-index-url", "constraint"):
            continue
        for word in value.strip("'\"").split():
            word = word.removeprefix("file://").rstrip("/")
            if word.startswith("/"):
                paths.append(word.removesuffix("/simple"))
    return paths


def test_image_holds_berth_and_its_extras_and_nothing_of_the_build_machine() -> None:
    result = container.cli("run", "--rm", "--network", "none", "--no-healthcheck", "--entrypoint", "python", container.IMAGE,
                           "-c", INSIDE, *_host_package_paths(), timeout_s=180)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], result.stdout + result.stderr


def _chat(running: Container, **extra: object) -> dict:  # type: ignore[type-arg]
    body = {**CHAT, "max_tokens": 8, **extra}
    reply = httpx.post(running.url("/v1/chat/completions"), json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def test_default_real_model_offline_as_a_non_root_user(start_container: StartContainer) -> None:
    """demo://smollm2 from the wheel in the image: dequantized into BERTH_HOME on first start, /ping 503 until then."""
    running = start_container(env={"HF_MODEL_ID": "demo://smollm2"}, user="1000:1000")
    seen = running.wait_ready()
    assert seen[0] == 503 and seen[-1] == 200, seen
    reply = _chat(running, messages=[{"role": "user", "content": "What is the capital of France?"}],
                  max_tokens=16)
    assert reply["choices"][0]["message"]["content"].strip() == "The capital of France is Paris."
    made = container.cli("exec", running.name, "stat", "-c", "%u %n",
                         "/opt/berth/home/demo-models/smollm2/berth-wheel.json").stdout
    assert made.split()[0] == "1000", made


def test_llamacpp_engine_serves_a_gguf_file(start_container: StartContainer, smollm2_gguf: Path) -> None:
    """The llama.cpp engine (xllamacpp) in the image: SmolLM2's Q4_1 .gguf, auto-picked, as in test_llamacpp_gguf."""
    running = start_container(volumes=[f"{smollm2_gguf}:/opt/ml/model/{smollm2_gguf.name}:ro"],
                              env={"HF_MODEL_ID": f"/opt/ml/model/{smollm2_gguf.name}", "BERTH_MODEL_UID": "gguf"})
    running.wait_ready()
    assert "engine llama.cpp (auto" in running.logs()
    system = {"role": "system", "content": "You are a helpful assistant."}  # see test_llamacpp_gguf.py
    reply = _chat(running, model="gguf", max_tokens=12,
                  messages=[system, {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply["choices"][0]["message"]["content"]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_weights_are_read_only_and_untouched(start_container: StartContainer, tiny_model: Path,
                                             tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_model, weights)
    before = _fingerprint(weights)
    running = start_container(model=weights)
    running.wait_ready()
    _chat(running)
    denied = container.cli("exec", running.name, "touch", "/opt/ml/model/written", check=False)
    assert denied.returncode != 0 and "Read-only" in denied.stderr, denied
    running.terminate()
    assert running.wait_exit(SIGTERM_GRACE_S) == 0
    assert _fingerprint(weights) == before
    assert sorted(p.name for p in weights.iterdir()) == sorted(before)


def test_sigterm_drains_the_in_flight_stream_and_exits_zero(start_container: StartContainer,
                                                            tiny_model: Path) -> None:
    running = start_container(model=tiny_model)
    running.wait_ready()
    events: list[str] = []
    finished = threading.Event()

    def stream() -> None:
        # 100 tokens: still streaming when SIGTERM lands, done well inside the 25 s drain on a loaded machine.
        body = {**CHAT, "max_tokens": 100, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", running.url("/v1/chat/completions"), json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        finished.set()

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 60
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(events) >= 3, "the stream never started"
    running.terminate()
    stopping = time.monotonic()
    at_sigterm = len(events)
    reader.join(timeout=SIGTERM_GRACE_S)
    assert at_sigterm < 100, "the stream had finished before SIGTERM: nothing was in flight"
    assert finished.is_set() and events[-1] == "[DONE]", (
        f"the in-flight stream was cut instead of drained ({at_sigterm} events at SIGTERM, {len(events)} in all)")
    assert running.wait_exit(SIGTERM_GRACE_S) == 0, running.logs()[-4000:]
    assert time.monotonic() - stopping < SIGTERM_GRACE_S
    assert "stopped" in running.logs()


@pytest.mark.parametrize("broken", ["empty", "bad-config"])
def test_a_model_that_cannot_load_exits_non_zero_with_the_reason(start_container: StartContainer, tmp_path: Path,
                                                                   broken: str) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    if broken == "bad-config":
        (weights / "config.json").write_text('{"model_type": "no-such-architecture"}')
    started = time.monotonic()
    running = start_container(model=weights)
    code = running.wait_exit(120)
    logs = running.logs()
    assert code != 0, logs[-4000:]
    reason = "/opt/ml/model" if broken == "empty" else "no-such-architecture"
    assert reason in logs, logs[-4000:]
    assert time.monotonic() - started < 120


@pytest.fixture(scope="module")
def s3_weights(moto_endpoint: str, tiny_model: Path) -> str:
    """The tiny model under s3://image-weights/tiny/ on the moto server."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="image-weights")
    for path in sorted(tiny_model.iterdir()):
        client.upload_file(str(path), "image-weights", f"tiny/{path.name}")
    return "s3://image-weights/tiny/"


@pytest.mark.parametrize("source", ["file", "s3"])
def test_weights_from_file_url_and_s3_on_sagemakers_port(start_container: StartContainer, tiny_model: Path,
                                                         request: pytest.FixtureRequest, source: str) -> None:
    """SAGEMAKER_BIND_TO_PORT wins over PORT; HF_MODEL_ID file:// (a mounted dir) or s3:// (moto on the host)."""
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "PORT": str(free_port()), "BERTH_MODEL_UID": "src"}
    volumes: list[str] = []
    if source == "file":
        env["HF_MODEL_ID"] = "file:///models/tiny"
        volumes.append(f"{tiny_model}:/models/tiny:ro")
    else:
        moto = request.getfixturevalue("moto_endpoint")
        env.update({"HF_MODEL_ID": request.getfixturevalue("s3_weights"), "BERTH_S3_ENDPOINT_URL": moto, **AWS})
    running = start_container(port=port, env=env, volumes=volumes)
    running.wait_ready()
    assert [m["id"] for m in httpx.get(running.url("/v1/models"), timeout=30).json()["data"]] == ["src"]
    assert _chat(running, model="src", ignore_eos=True)["usage"]["completion_tokens"] == 8
