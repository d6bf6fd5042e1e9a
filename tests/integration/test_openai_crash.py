"""A model process that dies mid-stream: the client gets a final error event within seconds, not a hang."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx


def model_process_pid(launcher_pid: int) -> int:
    """The launcher's child running berth_server.model_process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == launcher_pid and b"berth_server.model_process" in cmdline:
            return int(entry.name)
    raise AssertionError("no model process found")


def test_model_crash_mid_stream_ends_with_error_event(start_server, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tiny_model, env={"BERTH_MODEL_UID": "tiny"})
    body = {"model": "tiny", "prompt": "Go", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    last = None
    with httpx.stream("POST", server.url("/v1/completions"), json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break
        os.kill(model_process_pid(server.process.pid), signal.SIGKILL)
        killed_at = time.monotonic()
        for line in lines:
            if line.startswith("data: "):
                last = line[len("data: "):]
    assert time.monotonic() - killed_at < 20
    assert last is not None and last != "[DONE]"
    error = json.loads(last)["error"]
    assert error["message"] and json.loads(last)["error_type"] == "incomplete_generation"
