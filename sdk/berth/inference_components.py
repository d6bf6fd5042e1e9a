"""LoRA adapters on SageMaker as inference components, in AWS's documented flow.

The endpoint hosts a base inference component (the model, LoRA enabled) and one adapter inference
component per adapter: Specification.BaseInferenceComponentName names the base and
Specification.Container.ArtifactUrl the adapter's s3:// .tar.gz. An invocation names the adapter's
component (InferenceComponentName); SageMaker loads the adapter into the container and passes
its name in X-Amzn-SageMaker-Adapter-Identifier. Adapter components are named after the adapter.

Copies (issue 22): deploy(..., copies=N) gives the base component RuntimeConfig.CopyCount=N, spread
over the endpoint's instances (SchedulingConfig SPREAD); SageMaker places and routes the copies.
An autoscaling target on the copy count follows AWS's documented shape
(inference-component/NAME, sagemaker:inference-component:DesiredCopyCount).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from berth.errors import DeployError, ValidationError
from berth.predictor import Body, RuntimePredictor, encode_body

ROUTING = {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"


def check_copies(copies: int) -> int:
    """A copy count SageMaker takes: a positive integer."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValidationError(f"copies must be a positive integer, not {copies!r}")
    return copies


def check_adapter(name: str, src: str) -> None:
    """Adapter names follow the container's rules; SageMaker takes the artifact as an s3:// .tar.gz."""
    from berth.validation import adapter_name

    adapter_name(name)
    if not (src.startswith("s3://") and src.endswith(".tar.gz")):
        raise ValidationError(f"adapter {name!r}: src must be an s3://...tar.gz artifact on SageMaker, not {src!r}")


def base_component_name(endpoint_name: str) -> str:
    """The base inference component's name for an endpoint."""
    return f"{endpoint_name[:58]}-base"


class InferenceComponents:
    """Create, wait for and delete the base and adapter inference components of one endpoint."""

    def __init__(self, sm: Any, endpoint_name: str, poll_s: float = 15.0,
                 progress: Callable[[str], None] = lambda message: None) -> None:
        """Use this SageMaker client for that endpoint."""
        self.sm = sm
        self.endpoint_name = endpoint_name
        self.base = base_component_name(endpoint_name)
        self.poll_s = poll_s
        self.progress = progress

    def create_base(self, model_name: str, variant: str, startup: dict[str, int], min_memory_mb: int,
                    accelerators: int | None, copies: int | None = None) -> None:
        """The base component: the model with LoRA on; `copies` copies spread over the instances (default one)."""
        resources: dict[str, Any] = {"MinMemoryRequiredInMb": min_memory_mb}
        if accelerators:
            resources["NumberOfAcceleratorDevicesRequired"] = accelerators
        specification: dict[str, Any] = {"ModelName": model_name, "StartupParameters": startup,
                                         "ComputeResourceRequirements": resources}
        if copies is not None:
            specification["SchedulingConfig"] = {"PlacementStrategy": "SPREAD"}
        self.progress(f"creating inference component {self.base} ({copies or 1} copies)")
        self.sm.create_inference_component(
            InferenceComponentName=self.base, EndpointName=self.endpoint_name, VariantName=variant,
            Specification=specification, RuntimeConfig={"CopyCount": copies or 1})

    def scale(self, copies: int) -> None:
        """Change the base component's copy count (SageMaker adds or removes copies)."""
        self.progress(f"scaling inference component {self.base} to {check_copies(copies)} copies")
        self.sm.update_inference_component_runtime_config(InferenceComponentName=self.base,
                                                          DesiredRuntimeConfig={"CopyCount": copies})

    def autoscale_copies(self, autoscaling: Any, min_copies: int, max_copies: int,
                         invocations_per_copy: float, cooldown_s: int = 300) -> None:
        """Application Auto Scaling on the base component's copy count, tracking invocations per copy."""
        if not 1 <= min_copies <= max_copies:
            raise ValidationError(f"autoscaling needs 1 <= min copies ({min_copies}) <= max ({max_copies})")
        from berth.sagemaker_target import track_target

        resource_id = f"inference-component/{self.base}"
        track_target(autoscaling, f"{self.base}-invocations-per-copy", resource_id, COPY_DIMENSION,
                     (min_copies, max_copies), "SageMakerInferenceComponentInvocationsPerCopy", invocations_per_copy,
                     cooldown_s)
        self.progress(f"autoscaling {resource_id}: {min_copies}-{max_copies} copies")

    def add_adapter(self, name: str, src: str) -> None:
        """One adapter component on the base (its name is the adapter's)."""
        check_adapter(name, src)
        self.progress(f"creating adapter inference component {name}")
        self.sm.create_inference_component(
            InferenceComponentName=name, EndpointName=self.endpoint_name,
            Specification={"BaseInferenceComponentName": self.base, "Container": {"ArtifactUrl": src}})

    def remove(self, name: str) -> None:
        """Delete one component."""
        self.progress(f"deleting inference component {name}")
        self.sm.delete_inference_component(InferenceComponentName=name)

    def adapters(self) -> list[str]:
        """The endpoint's adapter components (every component but the base)."""
        pages = self.sm.get_paginator("list_inference_components").paginate(EndpointNameEquals=self.endpoint_name)
        names = [c["InferenceComponentName"] for page in pages for c in page["InferenceComponents"]]
        return [n for n in names if n != self.base]

    def wait_gone(self, name: str, timeout_s: float = 1800.0) -> None:
        """Poll until the component no longer exists (SageMaker answers ValidationException)."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.sm.describe_inference_component(InferenceComponentName=name)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ValidationException":
                    return
                raise
            time.sleep(self.poll_s)
        raise DeployError(f"inference component {name} still exists after {timeout_s:.0f}s")

    def wait(self, name: str, timeout_s: float = 3600.0) -> None:
        """Poll until the component is InService; DeployError when it fails or times out."""
        deadline = time.monotonic() + timeout_s
        while True:
            described = self.sm.describe_inference_component(InferenceComponentName=name)
            status = described["InferenceComponentStatus"]
            if status == "InService":
                self.progress(f"inference component {name}: InService")
                return
            if status == "Failed":
                raise DeployError(f"inference component {name} failed: {described.get('FailureReason', '?')}")
            if time.monotonic() + self.poll_s > deadline:
                raise DeployError(f"inference component {name} not InService after {timeout_s:.0f}s ({status})")
            time.sleep(self.poll_s)


class ComponentPredictor(RuntimePredictor):
    """A SageMaker endpoint served through inference components: the base, or an adapter by name."""

    def __init__(self, endpoint: Any, components: InferenceComponents, resource: str) -> None:
        """Invoke the endpoint's components; delete() removes them, then the endpoint, its config and model."""
        super().__init__(endpoint.name, endpoint.runtime, on_delete=self._delete)
        self.endpoint = endpoint
        self.components = components
        self.resource = resource  # the model's and the endpoint config's name

    def predict(self, body: Body, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> Any:
        """InvokeEndpoint on the adapter's component (the base component when adapter is None)."""
        import json

        return json.loads(self._invoke(encode_body(body), adapter=adapter or self.components.base, route=route,
                                       session=session)["Body"].read())

    def add_adapter(self, name: str, src: str, wait: bool = True) -> None:
        """Attach an adapter: a new adapter inference component."""
        self.components.add_adapter(name, src)
        if wait:
            self.components.wait(name)

    def remove_adapter(self, name: str) -> None:
        """Detach an adapter: delete its inference component."""
        self.components.remove(name)

    def scale(self, copies: int) -> None:
        """Change the number of copies of the model (the base component)."""
        self.components.scale(copies)

    def list_adapters(self) -> list[str]:
        """The adapters attached to the endpoint."""
        return self.components.adapters()

    def _delete(self) -> None:
        names = [*self.components.adapters(), self.components.base]
        for name in names:
            self.components.remove(name)
        for name in names:
            self.components.wait_gone(name)  # SageMaker keeps an endpoint while components remain
        sm = self.components.sm
        sm.delete_endpoint(EndpointName=self.endpoint_name)
        sm.delete_endpoint_config(EndpointConfigName=self.resource)
        sm.delete_model(ModelName=self.resource)


def deploy_with_components(endpoint: Any, spec: Any, adapters: dict[str, str], wait: bool = True,
                           timeout_s: float = 3600.0, min_memory_mb: int = 1024,
                           accelerators: int | None = None, copies: int | None = None,
                           copy_autoscaling: dict[str, Any] | None = None) -> ComponentPredictor:
    """Model -> endpoint config (no model in the variant) -> endpoint -> base component (`copies` copies, spread)
    -> adapter components; then autoscaling on the copy count when asked (min_copies, max_copies,
    invocations_per_copy)."""
    if copies is not None:
        check_copies(copies)
    for name, src in adapters.items():
        check_adapter(name, src)
    container = {**spec.container, "Environment": {"BERTH_ENABLE_LORA": "true", **spec.container["Environment"]}}
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    resource = f"{endpoint.name[:63 - len(stamp) - 1]}-{stamp}"
    sm = endpoint.sm
    endpoint.progress(f"creating model {resource}")
    sm.create_model(ModelName=resource, ExecutionRoleArn=spec.role, PrimaryContainer=container)
    variant = {"VariantName": "AllTraffic", "InstanceType": spec.instance_type,
               "InitialInstanceCount": spec.instance_count, "RoutingConfig": ROUTING}
    sm.create_endpoint_config(EndpointConfigName=resource, ExecutionRoleArn=spec.role, ProductionVariants=[variant])
    endpoint.progress(f"creating endpoint {endpoint.name}")
    sm.create_endpoint(EndpointName=endpoint.name, EndpointConfigName=resource)
    components = InferenceComponents(sm, endpoint.name, endpoint.poll_s, endpoint.progress)
    startup = {"ModelDataDownloadTimeoutInSeconds": spec.timeouts.download_s,
               "ContainerStartupHealthCheckTimeoutInSeconds": spec.timeouts.health_check_s}
    if accelerators is None and spec.instance_type.startswith(("ml.g", "ml.p")):
        accelerators = 1
    if wait:
        endpoint.wait(timeout_s)
    components.create_base(resource, "AllTraffic", startup, min_memory_mb, accelerators, copies)
    if wait:
        components.wait(components.base, timeout_s)
    for name, src in adapters.items():
        components.add_adapter(name, src)
        if wait:
            components.wait(name, timeout_s)
    if copy_autoscaling:
        components.autoscale_copies(endpoint.autoscaling, **copy_autoscaling)
    return ComponentPredictor(endpoint, components, resource)
