"""The SageMaker control plane end to end against a moto server, through the SDK and the CLI."""

from __future__ import annotations

import json

import boto3
import pytest
from berth.cli import main
from berth.errors import ValidationError
from berth.sagemaker_target import SageMakerEndpoint, SageMakerSpec, deploy_sagemaker
from botocore.stub import ANY, Stubber
from click.testing import CliRunner

ROLE = "arn:aws:iam::123456789012:role/BerthExecution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/berth:0.1.0"


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Point boto3 (and so the SDK and CLI) at moto; return a sagemaker client for checks."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("sagemaker", region_name="us-east-1")


def _model_of(sm, endpoint: str) -> tuple[dict, dict]:
    config_name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variant = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"][0]
    return variant, sm.describe_model(ModelName=variant["ModelName"])


def test_s3_prefix_deploys_uncompressed_with_sized_timeouts(aws) -> None:
    predictor = deploy_sagemaker("s3://weights/llama-3-70b-instruct", "berth-70b", IMAGE, ROLE, "ml.g4dn.12xlarge",
                                 env={"SM_NUM_GPUS": "4", "MESSAGES_API_ENABLED": "true"}, poll_s=0.05)
    variant, model = _model_of(aws, "berth-70b")
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["ModelDataSource"] == {"S3DataSource": {
        "S3Uri": "s3://weights/llama-3-70b-instruct/", "S3DataType": "S3Prefix", "CompressionType": "None"}}
    assert container["Environment"] == {"HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": "4",
                                        "MESSAGES_API_ENABLED": "true"}
    assert model["ExecutionRoleArn"] == ROLE
    assert variant["InstanceType"] == "ml.g4dn.12xlarge"
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] > 600  # 70B: larger than the floor
    assert variant["ModelDataDownloadTimeoutInSeconds"] > 600
    predictor.delete()
    assert aws.list_endpoints()["Endpoints"] == []
    assert aws.list_endpoint_configs()["EndpointConfigs"] == []
    assert aws.list_models()["Models"] == []


def test_tarball_and_hub_id_and_overrides(aws) -> None:
    deploy_sagemaker("s3://weights/model.tar.gz", "berth-tar", IMAGE, ROLE, "ml.g4dn.xlarge", poll_s=0.05)
    _, model = _model_of(aws, "berth-tar")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://weights/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["HF_MODEL_ID"] == "/opt/ml/model"
    deploy_sagemaker("Qwen/Qwen2.5-0.5B-Instruct", "berth-hub", IMAGE, ROLE, "ml.g4dn.xlarge",
                     health_check_timeout=900, download_timeout=1200, wait=False)
    variant, model = _model_of(aws, "berth-hub")
    assert model["PrimaryContainer"]["Environment"] == {"HF_MODEL_ID": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert "ModelDataUrl" not in model["PrimaryContainer"]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 1200
    for name in ("berth-tar", "berth-hub"):
        SageMakerEndpoint(name).delete()


def test_autoscaling_registers_target_tracking(aws) -> None:
    deploy_sagemaker("org/model-8b", "berth-scaled", IMAGE, ROLE, "ml.g4dn.xlarge", poll_s=0.05,
                     autoscaling={"min_instances": 1, "max_instances": 4, "invocations_per_instance": 50})
    scaling = boto3.client("application-autoscaling", region_name="us-east-1")
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == "endpoint/berth-scaled/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 50
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    SageMakerEndpoint("berth-scaled").delete()
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


@pytest.mark.parametrize("kwargs, message", [
    ({"endpoint_name": "bad_name"}, "invalid endpoint name"),
    ({"endpoint_name": "-x"}, "invalid endpoint name"),
    ({"endpoint_name": "a" * 64}, "invalid endpoint name"),
    ({"role": ""}, "role is required"),
    ({"role": "BerthExecution"}, "invalid role"),
    ({"role": "arn:aws:iam::123:role/x"}, "invalid role"),
    ({"instance_type": "g5.2xlarge"}, "invalid instance type"),
    ({"instance_type": "ml.G5.2xlarge"}, "invalid instance type"),
    ({"health_check_timeout_s": 5000}, "outside SageMaker's"),
    ({"model": ""}, "a model is required"),
])
def test_invalid_input_fails_before_any_call(kwargs: dict, message: str) -> None:
    args = {"model": "org/m", "endpoint_name": "ok-name", "image_uri": IMAGE, "role": ROLE,
            "instance_type": "ml.g5.2xlarge", **kwargs}
    with pytest.raises(ValidationError, match=message):
        SageMakerSpec(**args)


def test_update_creates_new_config_and_cleans_old_with_stubber() -> None:
    """moto has no update_endpoint: check the exact call sequence with botocore's Stubber."""
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    spec = SageMakerSpec("org/model-7b", "berth-upd", IMAGE, ROLE, "ml.g5.2xlarge", env={"A": "1"})
    endpoint = SageMakerEndpoint("berth-upd", sagemaker_client=sm, poll_s=0)
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("old-config", "InService"), {"EndpointName": "berth-upd"})
        stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "old-config", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/old",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "old-model"}],
            "CreationTime": "2026-01-01"}, {"EndpointConfigName": "old-config"})
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m"}, {
            "ModelName": ANY, "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "Environment": {"HF_MODEL_ID": "org/model-7b", "A": "1"}}})
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c"},
                          {"EndpointConfigName": ANY, "ProductionVariants": ANY})
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/berth-upd"},
                          {"EndpointName": "berth-upd", "EndpointConfigName": ANY})
        stub.add_response("describe_endpoint", _described("new-config", "Updating"), {"EndpointName": "berth-upd"})
        stub.add_response("describe_endpoint", _described("new-config", "InService"), {"EndpointName": "berth-upd"})
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "old-config"})
        stub.add_response("delete_model", {}, {"ModelName": "old-model"})
        endpoint.update(spec)
        stub.assert_no_pending_responses()


def test_deploy_to_an_existing_endpoint_updates_it() -> None:
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("old-config", "InService"))  # exists()
        stub.add_response("describe_endpoint", _described("old-config", "InService"))  # resources()
        stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "old-config",
            "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/old",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "old-model"}],
            "CreationTime": "2026-01-01"})
        stub.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m"})
        stub.add_response("create_endpoint_config",
                          {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c"})
        stub.add_response("update_endpoint",
                          {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/berth-upd"})
        stub.add_response("describe_endpoint", _described("new-config", "InService"))
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "old-config"})
        stub.add_response("delete_model", {}, {"ModelName": "old-model"})
        deploy_sagemaker("org/m", "berth-upd", IMAGE, ROLE, "ml.g5.12xlarge", poll_s=0, sagemaker_client=sm)
        stub.assert_no_pending_responses()


def test_wait_reports_failure() -> None:
    from berth.errors import DeployError

    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    seen: list[str] = []
    endpoint = SageMakerEndpoint("berth-f", sagemaker_client=sm, poll_s=0, progress=seen.append)
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", _described("c", "Creating"))
        stub.add_response("describe_endpoint", {**_described("c", "Failed"), "FailureReason": "health check"})
        with pytest.raises(DeployError, match="Failed: health check"):
            endpoint.wait(60)
    assert seen == ["endpoint berth-f: Creating", "endpoint berth-f: Failed"]


def _described(config: str, status: str) -> dict:
    return {"EndpointName": "berth-upd", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/berth-upd", "EndpointConfigName": config,
            "EndpointStatus": status, "CreationTime": "2026-01-01", "LastModifiedTime": "2026-01-01"}


def test_cli_deploy_list_describe_delete(aws) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["deploy", "sagemaker", "--name", "berth-cli", "--model", "s3://w/m/",
                                  "--image-uri", IMAGE, "--role", ROLE, "--instance-type", "ml.g4dn.xlarge",
                                  "--env", "SM_NUM_GPUS=1", "--env", "MAX_TOTAL_TOKENS=4096",
                                  "--health-check-timeout", "1200", "--no-wait"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "berth-cli"
    listed = runner.invoke(main, ["endpoints", "list"])
    assert listed.exit_code == 0 and "berth-cli\tInService" in listed.stdout
    described = runner.invoke(main, ["endpoints", "describe", "berth-cli"])
    assert described.exit_code == 0, described.output
    data = json.loads(described.stdout)
    assert data["models"][0]["PrimaryContainer"]["Environment"] == {
        "HF_MODEL_ID": "/opt/ml/model", "SM_NUM_GPUS": "1", "MAX_TOTAL_TOKENS": "4096"}
    assert data["config"]["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200
    deleted = runner.invoke(main, ["endpoints", "delete", "berth-cli"])
    assert deleted.exit_code == 0, deleted.output
    assert aws.list_endpoints()["Endpoints"] == [] and aws.list_models()["Models"] == []


def test_cli_aws_error_is_one_line(aws) -> None:
    result = CliRunner().invoke(main, ["endpoints", "delete", "no-such-endpoint"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: An error occurred")
