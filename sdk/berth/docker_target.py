"""Run the Berth image on a local Docker engine through the `docker` Python SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth.errors import DeployError, DockerUnavailableError, ValidationError
from berth.local_target import free_port, wait_for_ping
from berth.predictor import HttpPredictor

CONTAINER_MODEL_DIR = "/opt/ml/model"
CONTAINER_PORT = 8080


def docker_client() -> Any:
    """A connected docker client, or DockerUnavailableError at once (no package, no engine)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        raise DockerUnavailableError("the docker target needs the docker package: pip install docker") from exc
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except (DockerException, OSError) as exc:
        raise DockerUnavailableError(
            f"no Docker engine is reachable ({str(exc).splitlines()[0][:200]}); start Docker or set DOCKER_HOST"
        ) from exc
    return client


def container_options(model: str | Path, image: str, port: int, gpus: int | str | None,
                      env: dict[str, str] | None) -> dict[str, Any]:
    """Arguments for containers.run: `serve`, env, port, GPUs, and a read-only weights volume."""
    from docker.types import DeviceRequest

    if not image:
        raise ValidationError("an image is required (e.g. berth:cpu or <account>.dkr.ecr.<region>.amazonaws.com/berth:tag)")
    environment = {"HF_MODEL_ID": str(model)}
    volumes: dict[str, dict[str, str]] = {}
    local = Path(str(model)).expanduser()
    if local.is_dir():
        volumes[str(local.resolve())] = {"bind": CONTAINER_MODEL_DIR, "mode": "ro"}
        environment["HF_MODEL_ID"] = CONTAINER_MODEL_DIR
    environment.update(env or {})
    options: dict[str, Any] = {"image": image, "command": "serve", "detach": True, "environment": environment,
                               "ports": {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", port)}, "volumes": volumes,
                               "shm_size": "2g"}
    if gpus:
        count = -1 if gpus == "all" else int(gpus)
        options["device_requests"] = [DeviceRequest(count=count, capabilities=[["gpu"]])]
        environment.setdefault("SM_NUM_GPUS", str(count if count > 0 else 1))
    return options


class DockerPredictor(HttpPredictor):
    """A Predictor for a running container; logs() and delete() (stop + remove)."""

    def __init__(self, container: Any, base_url: str, endpoint_name: str) -> None:
        """Own the container."""
        super().__init__(base_url, endpoint_name, on_delete=self._remove)
        self.container = container

    def logs(self) -> str:
        """The container's logs so far."""
        return self.container.logs().decode("utf-8", errors="replace")

    def _remove(self) -> None:
        """Stop (SIGTERM, 30 s grace as SageMaker gives) and remove the container."""
        self.container.stop(timeout=30)
        self.container.remove()


def deploy_docker(model: str | Path, image: str, port: int | None = None, gpus: int | str | None = None,
                  env: dict[str, str] | None = None, name: str | None = None,
                  startup_timeout_s: float = 900.0, client: Any = None) -> DockerPredictor:
    """Start the image with `serve`, wait for /ping, and return its Predictor (`client`: a docker client)."""
    client = client or docker_client()
    port = port or free_port()
    container = client.containers.run(name=name, **container_options(model, image, port, gpus, env))
    base_url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        container.reload()
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=50).decode("utf-8", errors="replace")
            raise DeployError(f"container {container.short_id} exited before /ping answered:\n{tail}")

    try:
        wait_for_ping(base_url, startup_timeout_s, alive)
    except BaseException:
        container.remove(force=True)
        raise
    return DockerPredictor(container, base_url, name or container.name)
