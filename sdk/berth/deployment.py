"""berth.deploy(target=...): one entry point for SageMaker, Docker and local deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from berth.errors import ValidationError
from berth.predictor import Predictor

Target = Literal["sagemaker", "docker", "local"]


def deploy(target: Target = "sagemaker", model: str | Path = "", **options: Any) -> Predictor:
    """Deploy `model` to `target` and return a Predictor.

    sagemaker: endpoint_name, image_uri, role, instance_type, instance_count, env, region,
        health_check_timeout, download_timeout, size_billions, wait, autoscaling={min_instances,
        max_instances, invocations_per_instance}.
    docker: image, port, gpus, env, name.  local: port, endpoint_name, env, startup_timeout_s.
    """
    if target == "sagemaker":
        from berth.sagemaker_target import deploy_sagemaker

        return deploy_sagemaker(model=str(model), **options)
    if target == "docker":
        from berth.docker_target import deploy_docker

        return deploy_docker(model=model, **options)
    if target == "local":
        from berth.local_target import deploy_local

        return deploy_local(model=model, **options)
    raise ValidationError(f"unknown target {target!r}: choose sagemaker, docker or local")
