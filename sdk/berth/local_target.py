"""Run Berth as a local process (no Docker) and serve SageMaker's runtime API in front of it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from berth.errors import DeployError, ValidationError
from berth.predictor import HttpPredictor, RuntimePredictor
from berth.runtime_proxy import RuntimeServer
from berth.validation import endpoint_name as check_endpoint_name

# The checkout's `serve` script (sdk/berth/ -> repo root); installed copies use the launcher module.
_REPO_SERVE = Path(__file__).resolve().parents[2] / "serve"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    """How to start `serve` here: the repo's script when present, else `python -m berth_server.launcher`."""
    if _REPO_SERVE.is_file():
        return [sys.executable, str(_REPO_SERVE)]
    return [sys.executable, "-m", "berth_server.launcher"]


def wait_for_ping(url: str, timeout_s: float, alive: Any = lambda: None) -> None:
    """Poll GET {url}/ping until 200; `alive()` may raise to stop early (the server died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive()
        try:
            if httpx.get(url + "/ping", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise DeployError(f"{url}/ping did not answer 200 within {timeout_s:.0f}s")


class LocalPredictor(HttpPredictor):
    """A Predictor for a local `serve` process, with a local SageMaker runtime API in front of it."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, endpoint_name: str,
                 runtime: RuntimeServer, log_path: Path) -> None:
        """Own the process and the runtime server; delete() stops both."""
        super().__init__(base_url, endpoint_name, on_delete=self._stop)
        self.process = process
        self.runtime_server = runtime
        self.log_path = log_path

    @property
    def runtime_endpoint_url(self) -> str:
        """endpoint_url for boto3.client("sagemaker-runtime", endpoint_url=...)."""
        return self.runtime_server.url

    def runtime_client(self, region: str = "us-east-1") -> Any:
        """A boto3 sagemaker-runtime client pointed at the local runtime API (dummy credentials)."""
        import boto3

        return boto3.client("sagemaker-runtime", endpoint_url=self.runtime_endpoint_url, region_name=region,
                            aws_access_key_id="berth-local", aws_secret_access_key="berth-local")

    def sagemaker_predictor(self) -> Any:
        """The SageMaker SDK v2 Predictor, talking to the local runtime API."""
        return RuntimePredictor(self.endpoint_name, self.runtime_client()).sagemaker_predictor()

    def logs(self) -> str:
        """The server's combined stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def _stop(self, timeout_s: float = 40.0) -> None:
        """Stop the runtime API, then SIGTERM the server's process group (SIGKILL after timeout_s)."""
        self.runtime_server.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the launcher drains and stops its children
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def deploy_local(model: str | Path | None, port: int | None = None, endpoint_name: str = "berth-local",
                 env: dict[str, str] | None = None, runtime_port: int = 0, startup_timeout_s: float = 600.0,
                 home: str | Path | None = None, command: list[str] | None = None) -> LocalPredictor:
    """Start `serve` on 127.0.0.1:port with HF_MODEL_ID=model, wait for /ping, start the runtime API.

    model=None leaves HF_MODEL_ID unset, as on SageMaker: the server loads BERTH_SAGEMAKER_MODEL_DIR.
    """
    check_endpoint_name(endpoint_name)
    if model is not None and not str(model):
        raise ValidationError("a model is required: a local directory, demo://tiny, s3:// or a hub id")
    port = port or free_port()
    workdir = Path(home) if home else Path(tempfile.mkdtemp(prefix="berth-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "HF_MODEL", "SAGEMAKER_BIND_TO_PORT"))}
    if model is not None:
        child_env["HF_MODEL_ID"] = str(model)
    child_env.update({"PORT": str(port), "BERTH_HOST": "127.0.0.1",
                      "BERTH_HOME": str(workdir), "PYTHONUNBUFFERED": "1"})
    child_env.update(env or {})
    log_path = workdir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command or serve_command(), stdout=log, stderr=subprocess.STDOUT,
                                   env=child_env, cwd=str(workdir), start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise DeployError(f"serve exited with code {process.returncode} before /ping answered:\n{tail}")

    try:
        wait_for_ping(base_url, startup_timeout_s, alive)
        runtime = RuntimeServer(endpoint_name, base_url, port=runtime_port).serve()
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise
    return LocalPredictor(process, base_url, endpoint_name, runtime, log_path)
