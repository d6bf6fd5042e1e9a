"""SageMaker copies in the SDK (issue 22): deploy(copies=N) -> an inference component with CopyCount N, spread over
the instances; autoscaling on the copy count; scale. botocore's Stubber checks every call against the real API."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from berth import deploy
from berth.errors import ValidationError
from berth.inference_components import ComponentPredictor
from botocore.stub import ANY, Stubber

from tests.unit.test_sdk_adapters import ARN, IMAGE, ROLE, _component, stub_component_endpoint


def _client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_deploy_with_copies_creates_a_spread_component_with_that_copy_count_and_autoscales_it() -> None:
    sm, scaling = _client("sagemaker"), _client("application-autoscaling")
    with Stubber(sm) as stub, Stubber(scaling) as auto:
        stub_component_endpoint(stub, "ml.g5.12xlarge", 2)
        stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/b"}, {
            "InferenceComponentName": "berth-lora-base", "EndpointName": "berth-lora", "VariantName": "AllTraffic",
            "Specification": {"ModelName": ANY, "StartupParameters": ANY,
                              "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 1024,
                                                              "NumberOfAcceleratorDevicesRequired": 1},
                              "SchedulingConfig": {"PlacementStrategy": "SPREAD"}},
            "RuntimeConfig": {"CopyCount": 4}})
        stub.add_response("describe_inference_component", _component("berth-lora-base", "InService"))
        resource = "inference-component/berth-lora-base"
        dimension = "sagemaker:inference-component:DesiredCopyCount"
        auto.add_response("register_scalable_target", {}, {
            "ServiceNamespace": "sagemaker", "ResourceId": resource, "ScalableDimension": dimension,
            "MinCapacity": 2, "MaxCapacity": 8})
        auto.add_response("put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:policy"}, {
            "PolicyName": ANY, "ServiceNamespace": "sagemaker", "ResourceId": resource,
            "ScalableDimension": dimension, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 5.0, "ScaleInCooldown": 300, "ScaleOutCooldown": 300,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"}}})
        predictor = deploy("sagemaker", "org/model-7b", endpoint_name="berth-lora", image_uri=IMAGE, role=ROLE,
                           instance_type="ml.g5.12xlarge", instance_count=2, copies=4, poll_s=0, sagemaker_client=sm,
                           autoscaling_client=scaling,
                           copy_autoscaling={"min_copies": 2, "max_copies": 8, "invocations_per_copy": 5})
        stub.assert_no_pending_responses()
        auto.assert_no_pending_responses()
        assert isinstance(predictor, ComponentPredictor)
        stub.add_response("update_inference_component_runtime_config",
                          {"InferenceComponentArn": f"{ARN}:inference-component/b"},
                          {"InferenceComponentName": "berth-lora-base", "DesiredRuntimeConfig": {"CopyCount": 6}})
        predictor.scale(6)
        stub.assert_no_pending_responses()
        with pytest.raises(ValidationError, match="copies"):
            predictor.scale(0)


@pytest.mark.parametrize("copies", [0, -1, "2", True])
def test_bad_copy_counts_are_refused_before_any_call(copies: Any) -> None:
    sm = _client("sagemaker")
    with Stubber(sm), pytest.raises(ValidationError, match="copies"):
        deploy("sagemaker", "org/model-7b", endpoint_name="berth-lora", image_uri=IMAGE, role=ROLE,
               instance_type="ml.g5.2xlarge", copies=copies, sagemaker_client=sm)


def test_cli_scale_changes_the_copy_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from berth import cli
    from click.testing import CliRunner

    sm = _client("sagemaker")
    monkeypatch.setattr(cli, "_sagemaker_client", lambda region: sm)
    with Stubber(sm) as stub:
        stub.add_response("update_inference_component_runtime_config",
                          {"InferenceComponentArn": f"{ARN}:inference-component/b"},
                          {"InferenceComponentName": "shop-base", "DesiredRuntimeConfig": {"CopyCount": 3}})
        result = CliRunner().invoke(cli.main, ["scale", "shop", "--copies", "3"])
        assert result.exit_code == 0, result.output
        stub.assert_no_pending_responses()
    result = CliRunner().invoke(cli.main, ["scale", "shop", "--copies", "0"])
    assert result.exit_code != 0 and "copies must be a positive integer" in result.output
