"""Adapters in the SDK: SageMaker inference components (botocore Stubber on the real API shapes), HTTP predictors."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from berth.errors import ValidationError
from berth.inference_components import ComponentPredictor
from berth.sagemaker_target import deploy_sagemaker
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

ROLE = "arn:aws:iam::123456789012:role/BerthExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/berth:0.1.0"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
ADAPTERS = {"fr": "s3://bucket/lora/fr/adapter.tar.gz", "de": "s3://bucket/lora/de/adapter.tar.gz"}


def _client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _component(name: str, status: str) -> dict[str, Any]:
    return {"InferenceComponentName": name, "InferenceComponentArn": f"{ARN}:inference-component/{name}",
            "EndpointName": "berth-lora", "EndpointArn": f"{ARN}:endpoint/berth-lora",
            "CreationTime": "2026-01-01", "LastModifiedTime": "2026-01-01", "InferenceComponentStatus": status}


def _endpoint(status: str) -> dict[str, Any]:
    return {"EndpointName": "berth-lora", "EndpointArn": f"{ARN}:endpoint/berth-lora", "EndpointConfigName": "c",
            "EndpointStatus": status, "CreationTime": "2026-01-01", "LastModifiedTime": "2026-01-01"}


def stub_component_endpoint(stub: Stubber, instance_type: str, instance_count: int) -> None:
    """The calls before the components: model (LoRA on), endpoint config without a model, endpoint, InService."""
    stub.add_response("create_model", {"ModelArn": f"{ARN}:model/m"}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "Environment": {"HF_MODEL_ID": "org/model-7b",
                                                              "BERTH_ENABLE_LORA": "true"}}})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/c"}, {
        "EndpointConfigName": ANY, "ExecutionRoleArn": ROLE,
        "ProductionVariants": [{"VariantName": "AllTraffic", "InstanceType": instance_type,
                                "InitialInstanceCount": instance_count,
                                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}]})
    stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/berth-lora"},
                      {"EndpointName": "berth-lora", "EndpointConfigName": ANY})
    stub.add_response("describe_endpoint", _endpoint("InService"), {"EndpointName": "berth-lora"})


def test_deploy_with_adapters_follows_the_inference_component_flow() -> None:
    sm, runtime = _client("sagemaker"), _client("sagemaker-runtime")
    with Stubber(sm) as stub, Stubber(runtime) as rt:
        stub_component_endpoint(stub, "ml.g5.2xlarge", 1)
        stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/b"}, {
            "InferenceComponentName": "berth-lora-base", "EndpointName": "berth-lora", "VariantName": "AllTraffic",
            "Specification": {"ModelName": ANY, "StartupParameters": {
                "ModelDataDownloadTimeoutInSeconds": ANY, "ContainerStartupHealthCheckTimeoutInSeconds": ANY},
                "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 1024,
                                                "NumberOfAcceleratorDevicesRequired": 1}},
            "RuntimeConfig": {"CopyCount": 1}})
        stub.add_response("describe_inference_component", _component("berth-lora-base", "Creating"))
        stub.add_response("describe_inference_component", _component("berth-lora-base", "InService"))
        for name, src in ADAPTERS.items():
            stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/a"},
                              {"InferenceComponentName": name, "EndpointName": "berth-lora",
                               "Specification": {"BaseInferenceComponentName": "berth-lora-base",
                                                 "Container": {"ArtifactUrl": src}}})
            stub.add_response("describe_inference_component", _component(name, "InService"),
                              {"InferenceComponentName": name})
        predictor = deploy_sagemaker("org/model-7b", "berth-lora", IMAGE, ROLE, "ml.g5.2xlarge", poll_s=0,
                                     sagemaker_client=sm, adapters=ADAPTERS)
        stub.assert_no_pending_responses()
        assert isinstance(predictor, ComponentPredictor)
        predictor.runtime = runtime
        for component in ("fr", "berth-lora-base"):
            rt.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(b'{"ok": 1}'), 9)}, {
                "EndpointName": "berth-lora", "InferenceComponentName": component, "Body": ANY,
                "ContentType": "application/json", "Accept": "application/json"})
        assert predictor.predict({"inputs": "hi"}, adapter="fr") == {"ok": 1}
        assert predictor.predict({"inputs": "hi"}) == {"ok": 1}
        rt.assert_no_pending_responses()
        stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/es"},
                          {"InferenceComponentName": "es", "EndpointName": "berth-lora",
                           "Specification": {"BaseInferenceComponentName": "berth-lora-base",
                                             "Container": {"ArtifactUrl": "s3://b/es.tar.gz"}}})
        stub.add_response("describe_inference_component", _component("es", "InService"))
        predictor.add_adapter("es", "s3://b/es.tar.gz")
        stub.add_response("delete_inference_component", {}, {"InferenceComponentName": "es"})
        predictor.remove_adapter("es")
        stub.assert_no_pending_responses()


def test_adapter_sources_and_names_are_checked_before_any_call() -> None:
    sm = _client("sagemaker")
    with Stubber(sm) as stub:
        for adapters, why in [({"fr": "s3://b/fr/"}, "tar.gz"), ({"a/b": "s3://b/x.tar.gz"}, "no paths"),
                              ({"fr": "/local/fr"}, "s3://")]:
            with pytest.raises(ValidationError, match=why):
                deploy_sagemaker("org/m", "berth-lora", IMAGE, ROLE, "ml.g5.2xlarge", sagemaker_client=sm,
                                 adapters=adapters)
        stub.assert_no_pending_responses()


def test_http_predictor_sends_the_adapter_header() -> None:
    import httpx
    from berth.predictor import HttpPredictor

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/adapters" and request.method == "GET":
            return httpx.Response(200, json=[{"name": "fr"}])
        return httpx.Response(200, json={"ok": True}) if request.url.path == "/invocations" else httpx.Response(
            200, text="Adapter fr registered")

    predictor = HttpPredictor("http://berth", "e")
    predictor._client = httpx.Client(base_url="http://berth", transport=httpx.MockTransport(handler))
    assert predictor.predict({"inputs": "x"}, adapter="fr") == {"ok": True}
    assert seen[-1].headers["X-Amzn-SageMaker-Adapter-Identifier"] == "fr"
    predictor.add_adapter("fr", "s3://b/fr/")
    assert json.loads(seen[-1].content) == {"name": "fr", "src": "s3://b/fr/", "preload": True, "pin": False}
    assert predictor.list_adapters() == [{"name": "fr"}]
    predictor.remove_adapter("fr")
    assert (seen[-1].method, seen[-1].url.path) == ("DELETE", "/adapters/fr")
