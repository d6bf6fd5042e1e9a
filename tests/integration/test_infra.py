"""infra/ and the Dockerfile pass their linters; the IAM policy grants every call the SDK makes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SDK = REPO / "sdk" / "berth"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the venv (pip install -e '.[dev]')")
    return str(path)


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+runtime", text, re.MULTILINE)
    assert re.search(r"^ARG VARIANT=gpu$", text, re.MULTILINE)
    assert "EXPOSE 8080" in text
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE) and "/ping" in text
    assert "COPY serve /usr/local/bin/serve" in text
    assert 'CMD ["serve"]' in text and "python3.11" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_workflow_matches_github_schema() -> None:
    workflow = REPO / "infra" / "github" / "workflows" / "image.yml"
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow))
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflow.read_text()
    assert "docker/setup-buildx-action" in text and "variant: cpu" in text and "variant: gpu" in text
    assert "amazon-ecr-login" in text and "refs/tags/v" in text


def test_cloudformation_passes_cfn_lint() -> None:
    template = REPO / "infra" / "cloudformation" / "sagemaker-endpoint.yaml"
    result = _run(_tool("cfn-lint"), str(template))
    assert result.returncode == 0, result.stdout + result.stderr
    text = template.read_text()
    for resource in ("AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint",
                     "AWS::IAM::Role", "AWS::ApplicationAutoScaling::ScalingPolicy", "Condition: Autoscale"):
        assert resource in text


def _snake_to_pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_sdk_user_policy_grants_every_sdk_call() -> None:
    policy = json.loads((REPO / "infra" / "iam" / "sdk-user-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    granted = {a for s in policy["Statement"] if s["Effect"] == "Allow"
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert "*" not in granted and not any(a.endswith(":*") for a in granted)
    source = "\n".join(p.read_text() for p in SDK.glob("*.py"))
    prefixes = {"sm": "sagemaker", "runtime": "sagemaker", "autoscaling": "application-autoscaling"}
    called = {f"{prefixes[client]}:{_snake_to_pascal(op)}"
              for client, op in re.findall(r"\.(sm|runtime|autoscaling)\.([a-z_]+)\(", source)
              if op != "get_paginator"}  # a paginator is a client-side helper; its operation is counted below
    called |= {f"sagemaker:{_snake_to_pascal(op)}" for op in re.findall(r'get_paginator\("([a-z_]+)"\)', source)}
    assert len(called) >= 15
    assert called <= granted, sorted(called - granted)
    assert {"iam:PassRole", "s3:PutObject"} <= granted
