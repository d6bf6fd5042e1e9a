"""The real `serve` process: start-up failures, SageMaker's layout, SIGTERM drain, crash restart, disconnect abort."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.integration.conftest import RunningServer
from tests.integration.hang_up import assert_hang_up_aborts

CHAT = {"messages": [{"role": "user", "content": "Tell me a story"}], "temperature": 0}


def _ping_codes_until_exit(server: RunningServer, timeout_s: float) -> tuple[list[int], float]:
    """Poll /ping until the process exits; return the codes seen and the time it took."""
    started = time.monotonic()
    codes: list[int] = []
    while server.process.poll() is None and time.monotonic() - started < timeout_s:
        try:
            codes.append(httpx.get(server.url("/ping"), timeout=1.0).status_code)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return codes, time.monotonic() - started


def test_missing_weights_exit_non_zero_fast_and_name_the_source(start_server, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    server = start_server(missing, wait=False)
    codes, elapsed = _ping_codes_until_exit(server, timeout_s=30)
    assert server.process.poll() not in (None, 0), "serve must exit non-zero when the default model cannot load"
    assert elapsed < 30
    assert 200 not in codes
    assert str(missing) in server.logs()


def test_no_model_at_all_names_the_sagemaker_dir(start_server, tmp_path: Path) -> None:
    empty = tmp_path / "opt-ml-model"
    empty.mkdir()
    server = start_server(None, wait=False, env={"BERTH_SAGEMAKER_MODEL_DIR": str(empty)})
    assert server.process.wait(timeout=30) != 0
    assert str(empty) in server.logs()


def test_sagemaker_layout_port_and_invocations(start_server, tiny_model: Path, tmp_path: Path) -> None:
    """As the image runs on SageMaker: no HF_MODEL_ID, weights in /opt/ml/model, SAGEMAKER_BIND_TO_PORT."""
    model_dir = tmp_path / "opt" / "ml" / "model"
    shutil.copytree(tiny_model, model_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = start_server(None, wait=False, env={"BERTH_SAGEMAKER_MODEL_DIR": str(model_dir),
                                                 "SAGEMAKER_BIND_TO_PORT": str(port)})
    server.port = port  # SAGEMAKER_BIND_TO_PORT wins over PORT
    server.wait_ready()
    reply = httpx.post(server.url("/invocations"), json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
                       timeout=30)
    assert reply.status_code == 200
    assert isinstance(reply.json(), list) and "generated_text" in reply.json()[0]


def test_sigterm_drains_in_flight_stream_then_exits_zero(start_server, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    events: list[str] = []
    finished = threading.Event()

    def stream() -> None:
        body = {**CHAT, "max_tokens": 300, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", server.url("/v1/chat/completions"), json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        finished.set()

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 30
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(events) >= 3, "the stream never started"
    server.process.send_signal(signal.SIGTERM)
    reader.join(timeout=60)
    assert finished.is_set()
    assert events[-1] == "[DONE]", "the in-flight stream was cut instead of drained"
    assert server.process.wait(timeout=40) == 0
    assert "stopped" in server.logs()


def _model_pid(server: RunningServer) -> int:
    match = re.search(r"process (\d+) started", server.logs())
    assert match, server.logs()
    return int(match.group(1))


def test_crashed_model_process_is_restarted(start_server, tiny_model: Path) -> None:
    server = start_server(tiny_model, env={"BERTH_MAX_MODEL_RESTARTS": "2"})
    os.kill(_model_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while httpx.get(server.url("/ping"), timeout=2).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.wait_ready(timeout_s=90)
    assert "restart 1/2" in server.logs()
    reply = httpx.post(server.url("/v1/chat/completions"), json={**CHAT, "max_tokens": 4}, timeout=30)
    assert reply.status_code == 200


def test_client_disconnect_aborts_generation(berth_server: RunningServer) -> None:
    def hang_up() -> None:
        body = {**CHAT, "model": "tiny", "max_tokens": 1500, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", berth_server.url("/v1/chat/completions"), json=body, timeout=60) as reply:
            for count, _ in enumerate(reply.iter_lines()):
                if count >= 4:
                    break  # leaving the block closes the connection mid-stream

    assert_hang_up_aborts(berth_server, hang_up)


def test_metrics_are_prometheus_text(berth_server: RunningServer) -> None:
    httpx.post(berth_server.url("/generate"), json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, timeout=30)
    reply = httpx.get(berth_server.url("/metrics"), timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    for name in ("berth_http_requests_total", "berth_generated_tokens_total", "berth_model_queue_depth",
                 "berth_model_running_requests", "berth_model_finished_requests",
                 "berth_http_request_duration_seconds_bucket"):
        assert name in reply.text, name


def test_info_describes_the_default_model(berth_server: RunningServer) -> None:
    info = httpx.get(berth_server.url("/info"), timeout=10).json()
    assert info["model_id"] == berth_server.env["HF_MODEL_ID"]  # TGI reports the model id, not the served uid
    assert info["max_total_tokens"] > info["max_input_tokens"] > 0
    assert json.dumps(info)  # plain JSON, no NaN
