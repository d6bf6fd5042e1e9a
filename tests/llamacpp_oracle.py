"""llama.cpp's own server (xllamacpp listening on 127.0.0.1) in a child process: the reference for Berth's llama.cpp engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.llamacpp_bench import PEER_SCRIPT

# The same server bench/llamacpp_bench.py measures against.
SCRIPT = PEER_SCRIPT


@dataclass
class LlamaCppServer:
    """A running llama.cpp server we started; base_url is http://127.0.0.1:PORT."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM its process group, SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_llamacpp_server(gguf: Path, port: int, slots: int, slot_context: int, threads: int, log_path: Path,
                          timeout_s: float = 180.0) -> LlamaCppServer:
    """Start llama.cpp's server on `gguf` and wait until /health answers 200 (it says 503 while loading)."""
    argv = [sys.executable, "-c", SCRIPT, str(gguf), str(port), str(slots), str(slot_context), str(threads)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = LlamaCppServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"llama.cpp's server did not become ready in {timeout_s:.0f} s")
