"""Deploy Berth to a SageMaker real-time endpoint with boto3: model, endpoint config, endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from berth import validation
from berth.errors import DeployError, ValidationError
from berth.predictor import RuntimePredictor

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
VARIANT = "AllTraffic"
Progress = Callable[[str], None]


def _no_progress(message: str) -> None:
    """Default progress sink: silent."""


def model_container(model: str, image_uri: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """PrimaryContainer for a model given as an S3 prefix, an S3 model.tar.gz or a hub id; user env wins."""
    container: dict[str, Any] = {"Image": image_uri}
    base: dict[str, str]
    if model.startswith("s3://") and model.endswith(".tar.gz"):
        container["ModelDataUrl"] = model
        base = {"HF_MODEL_ID": SAGEMAKER_MODEL_DIR}
    elif model.startswith("s3://"):
        container["ModelDataSource"] = {"S3DataSource": {
            "S3Uri": model if model.endswith("/") else model + "/",
            "S3DataType": "S3Prefix", "CompressionType": "None"}}
        base = {"HF_MODEL_ID": SAGEMAKER_MODEL_DIR}
    elif model:
        base = {"HF_MODEL_ID": model}
    else:
        raise ValidationError("a model is required: an s3:// prefix, an s3://...tar.gz or a hub id")
    container["Environment"] = {**base, **(env or {})}
    return container


@dataclass
class SageMakerSpec:
    """Everything one endpoint config needs; validated on construction."""

    model: str
    endpoint_name: str
    image_uri: str
    role: str
    instance_type: str
    instance_count: int = 1
    env: dict[str, str] = field(default_factory=dict)
    health_check_timeout_s: int | None = None
    download_timeout_s: int | None = None
    size_billions: float | None = None

    def __post_init__(self) -> None:
        """Fail before any AWS call when an argument is wrong."""
        validation.endpoint_name(self.endpoint_name)
        validation.role_arn(self.role)
        validation.instance_type(self.instance_type)
        if not self.image_uri:
            raise ValidationError("an image URI is required (--image-uri <account>.dkr.ecr.<region>.amazonaws.com/berth:tag)")
        if self.instance_count < 1:
            raise ValidationError(f"instance count must be at least 1, not {self.instance_count}")
        self.timeouts = validation.timeouts_for(self.model, self.size_billions, self.health_check_timeout_s,
                                                self.download_timeout_s)
        self.container = model_container(self.model, self.image_uri, self.env)

    def variant(self, model_name: str) -> dict[str, Any]:
        """The single production variant, with the sized timeouts."""
        return {"VariantName": VARIANT, "ModelName": model_name, "InitialInstanceCount": self.instance_count,
                "InstanceType": self.instance_type,
                "ContainerStartupHealthCheckTimeoutInSeconds": self.timeouts.health_check_s,
                "ModelDataDownloadTimeoutInSeconds": self.timeouts.download_s}


def track_target(autoscaling: Any, policy: str, resource_id: str, dimension: str, capacity: tuple[int, int],
                 metric: str, target: float, cooldown_s: int) -> None:
    """Application Auto Scaling: register a scalable target and a target-tracking policy on a predefined metric."""
    autoscaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id,
                                         ScalableDimension=dimension, MinCapacity=capacity[0], MaxCapacity=capacity[1])
    autoscaling.put_scaling_policy(
        PolicyName=policy, ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=dimension,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target), "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
            "ScaleInCooldown": cooldown_s, "ScaleOutCooldown": cooldown_s})


class SageMakerEndpoint:
    """Create, wait for, update, scale and delete one endpoint and the resources behind it."""

    def __init__(self, endpoint_name: str, region: str | None = None, sagemaker_client: Any = None,
                 runtime_client: Any = None, autoscaling_client: Any = None, progress: Progress = _no_progress,
                 poll_s: float = 15.0) -> None:
        """Use the given boto3 clients or make them (AWS_ENDPOINT_URL is honoured by boto3 itself)."""
        import boto3

        session = boto3.Session(region_name=region)
        self.name = endpoint_name
        self.sm = sagemaker_client or session.client("sagemaker")
        self._runtime = runtime_client
        self._autoscaling = autoscaling_client
        self._session = session
        self.progress = progress
        self.poll_s = poll_s

    @property
    def runtime(self) -> Any:
        """The sagemaker-runtime client, made on first use."""
        if self._runtime is None:
            self._runtime = self._session.client("sagemaker-runtime", region_name=self.sm.meta.region_name)
        return self._runtime

    @property
    def autoscaling(self) -> Any:
        """The application-autoscaling client, made on first use."""
        if self._autoscaling is None:
            self._autoscaling = self._session.client("application-autoscaling",
                                                     region_name=self.sm.meta.region_name)
        return self._autoscaling

    def _create_model_and_config(self, spec: SageMakerSpec) -> str:
        """Create a uniquely named model and endpoint config; return the config name."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{int(time.time() * 1000) % 1000:03d}"
        resource = f"{self.name[:63 - len(stamp) - 1]}-{stamp}"
        self.progress(f"creating model {resource}")
        self.sm.create_model(ModelName=resource, ExecutionRoleArn=spec.role, PrimaryContainer=spec.container)
        self.progress(f"creating endpoint config {resource}")
        self.sm.create_endpoint_config(EndpointConfigName=resource, ProductionVariants=[spec.variant(resource)])
        return resource

    def create(self, spec: SageMakerSpec, wait: bool = True, timeout_s: float = 3600.0) -> None:
        """Create model -> endpoint config -> endpoint, then (optionally) wait for InService."""
        config = self._create_model_and_config(spec)
        self.progress(f"creating endpoint {self.name}")
        self.sm.create_endpoint(EndpointName=self.name, EndpointConfigName=config)
        if wait:
            self.wait(timeout_s)

    def update(self, spec: SageMakerSpec, wait: bool = True, timeout_s: float = 3600.0) -> None:
        """Roll out a new endpoint config (a new model too); remove the old ones once it is in service."""
        old = self.resources()
        config = self._create_model_and_config(spec)
        self.progress(f"updating endpoint {self.name} to {config}")
        self.sm.update_endpoint(EndpointName=self.name, EndpointConfigName=config)
        if wait:
            self.wait(timeout_s)
            self._delete_config_and_models(old["config"], old["models"])

    def exists(self) -> bool:
        """Whether the endpoint exists (SageMaker answers ValidationException for an unknown one)."""
        from botocore.exceptions import ClientError

        try:
            self.sm.describe_endpoint(EndpointName=self.name)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ValidationException":
                return False
            raise
        return True

    def wait(self, timeout_s: float = 3600.0) -> dict[str, Any]:
        """Poll describe_endpoint until InService; raise DeployError on Failed or after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            described = self.sm.describe_endpoint(EndpointName=self.name)
            status = described["EndpointStatus"]
            if status != last:
                self.progress(f"endpoint {self.name}: {status}")
                last = status
            if status == "InService":
                return described
            if status in ("Failed", "OutOfService", "Deleting"):
                reason = described.get("FailureReason", "no reason given")
                raise DeployError(f"endpoint {self.name} is {status}: {reason}")
            if time.monotonic() + self.poll_s > deadline:
                raise DeployError(f"endpoint {self.name} not InService after {timeout_s:.0f}s (last: {status})")
            time.sleep(self.poll_s)

    def resources(self) -> dict[str, Any]:
        """The endpoint's current config name and the model names in it."""
        config = self.sm.describe_endpoint(EndpointName=self.name)["EndpointConfigName"]
        variants = self.sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        return {"config": config, "models": [v["ModelName"] for v in variants]}

    def autoscale(self, min_instances: int, max_instances: int, invocations_per_instance: float,
                  cooldown_s: int = 300) -> None:
        """Register the variant as a scalable target and track invocations per instance."""
        if not 1 <= min_instances <= max_instances:
            raise ValidationError(f"autoscaling needs 1 <= min ({min_instances}) <= max ({max_instances})")
        resource_id = f"endpoint/{self.name}/variant/{VARIANT}"
        track_target(self.autoscaling, f"{self.name}-invocations", resource_id, "sagemaker:variant:DesiredInstanceCount",
                     (min_instances, max_instances), "SageMakerVariantInvocationsPerInstance",
                     invocations_per_instance, cooldown_s)
        self.progress(f"autoscaling {resource_id}: {min_instances}-{max_instances} instances")

    def delete(self) -> None:
        """Deregister autoscaling if any, delete the endpoint, then its endpoint config and models."""
        old = self.resources()
        resource_id = f"endpoint/{self.name}/variant/{VARIANT}"
        targets = self.autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])
        for target in targets["ScalableTargets"]:
            self.autoscaling.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id,
                                                        ScalableDimension=target["ScalableDimension"])
        self.progress(f"deleting endpoint {self.name}")
        self.sm.delete_endpoint(EndpointName=self.name)
        self._delete_config_and_models(old["config"], old["models"])

    def _delete_config_and_models(self, config: str, models: list[str]) -> None:
        """Remove one endpoint config and its models."""
        self.sm.delete_endpoint_config(EndpointConfigName=config)
        for model in models:
            self.sm.delete_model(ModelName=model)


class SageMakerPredictor(RuntimePredictor):
    """A Predictor for a real SageMaker endpoint; `update()` rolls out a new config."""

    def __init__(self, endpoint: SageMakerEndpoint) -> None:
        """Wrap the endpoint's runtime client."""
        super().__init__(endpoint.name, endpoint.runtime, on_delete=endpoint.delete)
        self.endpoint = endpoint

    def update(self, spec: SageMakerSpec, wait: bool = True, timeout_s: float = 3600.0) -> None:
        """Deploy a new model/config on the same endpoint."""
        self.endpoint.update(spec, wait=wait, timeout_s=timeout_s)


def deploy_sagemaker(model: str, endpoint_name: str, image_uri: str, role: str | None, instance_type: str,
                     instance_count: int = 1, env: dict[str, str] | None = None, region: str | None = None,
                     health_check_timeout: int | None = None, download_timeout: int | None = None,
                     size_billions: float | None = None, wait: bool = True, wait_timeout_s: float = 3600.0,
                     autoscaling: dict[str, Any] | None = None, progress: Progress = _no_progress,
                     poll_s: float = 15.0, sagemaker_client: Any = None,
                     update_existing: bool = True, adapters: dict[str, str] | None = None,
                     min_memory_mb: int = 1024, accelerators: int | None = None, copies: int | None = None,
                     copy_autoscaling: dict[str, Any] | None = None,
                     autoscaling_client: Any = None) -> RuntimePredictor:
    """Validate, create the endpoint (or roll out a new config if it exists), optionally autoscale it.

    adapters={"name": "s3://.../adapter.tar.gz"} deploys with inference components instead: a base
    component (LoRA on) and one adapter component per adapter (inference_components.py).
    copies=N deploys the model as an inference component with N copies spread over the instances
    (copy_autoscaling={min_copies, max_copies, invocations_per_copy} scales the copy count).
    """
    spec = SageMakerSpec(model=model, endpoint_name=endpoint_name, image_uri=image_uri, role=role or "",
                         instance_type=instance_type, instance_count=instance_count, env=dict(env or {}),
                         health_check_timeout_s=health_check_timeout, download_timeout_s=download_timeout,
                         size_billions=size_billions)
    endpoint = SageMakerEndpoint(endpoint_name, region=region, sagemaker_client=sagemaker_client,
                                 autoscaling_client=autoscaling_client, progress=progress, poll_s=poll_s)
    if adapters is not None or copies is not None or copy_autoscaling is not None:
        from berth.inference_components import deploy_with_components

        return deploy_with_components(endpoint, spec, adapters or {}, wait, wait_timeout_s, min_memory_mb,
                                      accelerators, copies, copy_autoscaling)
    if update_existing and endpoint.exists():
        endpoint.update(spec, wait=wait, timeout_s=wait_timeout_s)
    else:
        endpoint.create(spec, wait=wait, timeout_s=wait_timeout_s)
    if autoscaling:
        endpoint.autoscale(**autoscaling)
    return SageMakerPredictor(endpoint)


def list_endpoints(region: str | None = None) -> list[dict[str, Any]]:
    """Every endpoint in the region (name, status, creation time), following pagination."""
    import boto3

    paginator = boto3.Session(region_name=region).client("sagemaker").get_paginator("list_endpoints")
    return [e for page in paginator.paginate() for e in page["Endpoints"]]


def describe(endpoint_name: str, region: str | None = None) -> dict[str, Any]:
    """The endpoint, its config and its models, in one dict."""
    endpoint = SageMakerEndpoint(validation.endpoint_name(endpoint_name), region=region)
    described = endpoint.sm.describe_endpoint(EndpointName=endpoint_name)
    config = endpoint.sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    models = [endpoint.sm.describe_model(ModelName=v["ModelName"]) for v in config["ProductionVariants"]]
    return {"endpoint": described, "config": config, "models": models}
