"""Run the Berth image as SageMaker does (`IMAGE serve`, weights read-only at /opt/ml/model) for `make test-image`.

The container engine is Docker where one answers, podman otherwise (with infra/podman/containers.conf,
as `make image` builds). Containers share the host network and listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
# `make test-image` sets it; without it the image tests are skipped.
IMAGE = os.environ.get("BERTH_TEST_IMAGE", "")
STARTUP_TIMEOUT_S = 300.0


def engine() -> str:
    """`docker` when a Docker engine (not podman's shim) answers, else `podman`."""
    chosen = os.environ.get("CONTAINER_ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker"):
        version = subprocess.run(["docker", "--version"], capture_output=True, text=True, check=False).stdout
        info = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              check=False)
        if info.returncode == 0 and "podman" not in version.lower():
            return "docker"
    return "podman"


def cli(*args: str, timeout_s: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the container engine's CLI; podman gets the repo's containers.conf unless one is set."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "infra" / "podman" / "containers.conf"))
    result = subprocess.run([engine(), *args], capture_output=True, text=True, timeout=timeout_s, env=env,
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{engine()} {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result


@dataclass
class Container:
    """One detached container of the image; base_url is http://127.0.0.1:PORT on the host network."""

    name: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        result = cli("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = cli("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return state == "true"

    def exit_code(self) -> int:
        return int(cli("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code once the container has stopped; TimeoutError past timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout_s:.0f} s:\n{self.logs()[-4000:]}")
            time.sleep(0.2)
        return self.exit_code()

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> list[int]:
        """Poll /ping until 200 and return every status seen; fail with the log if it exits or times out."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited with {self.exit_code()}:\n{self.logs()[-6000:]}")
            try:
                status = httpx.get(self.url("/ping"), timeout=2.0).status_code
            except httpx.HTTPError:
                status = 0
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout_s:.0f} s:\n{self.logs()[-6000:]}")

    def terminate(self) -> None:
        """SIGTERM to PID 1, as `docker stop` and SageMaker send it."""
        cli("kill", "--signal", "TERM", self.name, check=False)

    def remove(self) -> None:
        cli("rm", "-f", self.name, check=False)


def run(port: int, *, env: Mapping[str, str] | None = None, model: Path | None = None,
        volumes: Sequence[str] = (), user: str | None = None, args: Sequence[str] = ("serve",)) -> Container:
    """Start the image detached: `serve`, PORT=port on 127.0.0.1, `model` mounted read-only at /opt/ml/model."""
    name = f"berth-test-{port}-{uuid.uuid4().hex[:6]}"
    # No HEALTHCHECK timers: podman wants systemd for them, which these machines lack (SageMaker ignores them too).
    options = ["run", "-d", "--name", name, "--network", "host", "--no-healthcheck", "-e", "BERTH_HOST=127.0.0.1",
               "-e", f"PORT={port}", "-e", "HF_HUB_OFFLINE=1"]
    for key, value in (env or {}).items():
        options += ["-e", f"{key}={value}"]
    if model is not None:
        options += ["-v", f"{model}:/opt/ml/model:ro"]
    for volume in volumes:
        options += ["-v", volume]
    if user:
        options += ["--user", user]
    cli(*options, IMAGE, *args)
    return Container(name, port)
