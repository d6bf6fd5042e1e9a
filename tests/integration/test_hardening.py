"""Hostile input and faults against the real `serve`: every refusal is a 4xx that names what and why, and nothing leaks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import MODEL_CACHE, RunningServer
from tests.integration.hang_up import assert_hang_up_aborts

CHAT = {"messages": [{"role": "user", "content": "Tell me a story"}], "temperature": 0}
HUGE = 2**64


def _post(server: RunningServer, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url(path), json=body, timeout=60, **kwargs)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"prompt": [1, -5], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [1, 10**9], "max_tokens": 2}, "prompt"),  # in int32, above the vocabulary
    ("/v1/completions", {"prompt": "hi", "seed": HUGE}, "seed"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": HUGE}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "seed": HUGE}, "seed"),
    ("/generate", {"inputs": "hi", "parameters": {"seed": HUGE}}, "seed"),
    ("/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": HUGE}}, "max_new_tokens"),
    ("/invocations", {"inputs": "hi", "parameters": {"top_k": HUGE}}, "top_k"),
    ("/invocations", {"prompt": [3, -1]}, "prompt"),
])
def test_out_of_range_values_are_4xx_naming_the_field(berth_server: RunningServer, path: str, body: Any,
                                                      field: str) -> None:
    reply = _post(berth_server, path, body)
    assert 400 <= reply.status_code < 500, (path, body, reply.status_code, reply.text)
    assert field in reply.json()["detail"], reply.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/generate", "/invocations", "/v1/models",
                                  "/v1/model_registrations/LLM"])
def test_deeply_nested_json_is_a_4xx(berth_server: RunningServer, path: str) -> None:
    text = '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"
    reply = httpx.post(berth_server.url(path), content=text, headers={"Content-Type": "application/json"},
                       timeout=60)
    assert 400 <= reply.status_code < 500 and "nests deeper" in reply.json()["detail"], reply.text


def test_long_uid_launch_read_your_writes_and_failed_launch(berth_server: RunningServer, tiny_model: Path) -> None:
    uid = "u" * 95  # within the documented 100 characters: its socket path must still work
    launched = _post(berth_server, "/v1/models", {"model_name": "llama-3.2-instruct", "model_path": str(tiny_model),
                                                  "model_engine": "transformers", "model_uid": uid})
    assert launched.status_code == 200, launched.text
    try:
        reply = _post(berth_server, "/v1/chat/completions", {**CHAT, "model": uid, "max_tokens": 3})
        assert reply.status_code == 200, reply.text
    finally:
        assert httpx.delete(berth_server.url(f"/v1/models/{uid}"), timeout=60).status_code == 200
    # Read-your-writes: the very next request no longer sees it, on the OpenAI and the Xinference views.
    assert uid not in [m["id"] for m in httpx.get(berth_server.url("/v1/models"), timeout=10).json()["data"]]
    assert httpx.get(berth_server.url(f"/v1/models/{uid}"), timeout=10).status_code == 404
    # A launch that fails is reported with its reason, and can be removed.
    # Under the test-model cache, which the image tests also mount into the container at the same path.
    broken = MODEL_CACHE / "hardening-broken-config"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "config.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    failed = _post(berth_server, "/v1/models", {"model_name": "llama-3.2-instruct", "model_path": str(broken),
                                                "model_engine": "transformers", "model_uid": "broken-1"})
    assert 400 <= failed.status_code < 600 and failed.json()["detail"], failed.text
    described = httpx.get(berth_server.url("/v1/models/instances?model_uid=broken-1"), timeout=10)
    assert described.status_code == 200, described.text
    assert httpx.delete(berth_server.url("/v1/models/broken-1"), timeout=60).status_code == 200
    assert httpx.get(berth_server.url("/v1/models/broken-1"), timeout=10).status_code == 404


def test_refused_launch_keys_are_named(berth_server: RunningServer, tiny_model: Path) -> None:
    for key, value in (("trust_remote_code", True), ("worker_extension_cls", "x.Y"), ("no_such_knob", 1)):
        reply = _post(berth_server, "/v1/models", {"model_name": "llama-3.2-instruct", "model_path": str(tiny_model),
                                                   "model_engine": "transformers", key: value})
        assert reply.status_code == 400 and key in reply.json()["detail"], reply.text


def _model_pid(server: RunningServer) -> int:
    matches = re.findall(r"model \S+: (?:replica \d+: )?process (\d+) started", server.logs())
    assert matches, server.logs()
    return int(matches[-1])


def test_non_streaming_client_disconnect_aborts_generation(start_server, tiny_model: Path) -> None:
    server = start_server(tiny_model, env={"BERTH_MODEL_UID": "tiny"})

    def hang_up() -> None:
        body = json.dumps({**CHAT, "max_tokens": 1500, "ignore_eos": True}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(1.0)  # generating now; the client gives up

    assert_hang_up_aborts(server, hang_up)


def test_stuck_model_times_out_then_crash_ends_streams_and_it_serves_again(start_server, tiny_model: Path) -> None:
    server = start_server(tiny_model, env={"BERTH_REQUEST_TIMEOUT": "4", "BERTH_MAX_MODEL_RESTARTS": "2"})
    pid = _model_pid(server)
    assert _post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 3}).status_code == 200  # connected
    # SIGSTOP: the model is there but silent. The budget gives 504 (TGI: 424) with a reason, never a hang.
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = _post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 3})
        assert reply.status_code == 504 and "BERTH_REQUEST_TIMEOUT" in reply.json()["detail"], reply.text
        assert time.monotonic() - started < 20
        tgi = _post(server, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 3}})
        assert tgi.status_code == 424 and tgi.json()["error"], tgi.text
    finally:
        os.kill(pid, signal.SIGCONT)
    # kill -9 mid-stream: every open stream ends with a final error event within 2 s.
    ends: list[tuple[float, str]] = []

    def stream() -> None:
        body = {**CHAT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        last = ""
        with httpx.stream("POST", server.url("/v1/chat/completions"), json=body, timeout=60) as response:
            for line in response.iter_lines():
                last = line[6:] if line.startswith("data: ") else last or f"{response.status_code}: {line}"
        ends.append((time.monotonic(), last))

    readers = [threading.Thread(target=stream) for _ in range(3)]
    for reader in readers:
        reader.start()
    time.sleep(2.0)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    codes: list[int] = []
    for reader in readers:
        reader.join(timeout=30)
    assert len(ends) == 3
    for ended, last in ends:
        assert ended - killed_at < 2.0, f"a stream ended {ended - killed_at:.1f} s after the kill"
        assert last.startswith("{") and "error" in json.loads(last), last
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        codes.append(httpx.get(server.url("/ping"), timeout=5).status_code)
        if codes[-1] == 200:
            break
        time.sleep(0.2)
    assert 503 in codes and codes[-1] == 200, codes
    assert _post(server, "/v1/chat/completions", {**CHAT, "max_tokens": 3}).status_code == 200


def test_killed_launcher_leaves_no_orphans(start_server, tiny_model: Path) -> None:
    server = start_server(tiny_model, env={"BERTH_WORKERS": "2"})
    launcher = psutil.Process(server.process.pid)
    children = launcher.children(recursive=True)
    assert len(children) >= 3, children  # the model process, gunicorn's master and its workers
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          check=False, capture_output=True).returncode == 0


def test_disk_full_while_persisting_a_registration_is_507(start_server, tiny_model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    registrations = home / "registrations"
    if not _mount_tmpfs(registrations, "256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        server = start_server(tiny_model, home=home)
        spec = {"version": 2, "model_name": "fits", "model_family": "my-fits-family", "model_ability": ["generate"],
                "context_length": 64,
                "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                                 "model_uri": str(tiny_model)}]}
        ok = _post(server, "/v1/model_registrations/LLM", {"model": json.dumps(spec), "persist": True})
        assert ok.status_code == 200, ok.text
        kept = registrations / "LLM" / "fits.json"
        before = kept.read_bytes()
        large = {**spec, "model_name": "too-big", "model_description": "x" * 400_000}
        full = _post(server, "/v1/model_registrations/LLM", {"model": json.dumps(large), "persist": True})
        assert full.status_code == 507 and "No space left" in full.json()["detail"], full.text
        assert kept.read_bytes() == before
        assert sorted(p.name for p in (registrations / "LLM").iterdir()) == ["fits.json"]  # no partial file
        names = [r["model_name"] for r in httpx.get(server.url("/v1/model_registrations/LLM"), timeout=10).json()]
        assert "fits" in names and "too-big" not in names
        server.stop()
    finally:
        subprocess.run(["umount", str(registrations)], check=False)
