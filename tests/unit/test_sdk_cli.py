"""CLI bad input: one clear line on stderr, non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from berth.cli import main
from click.testing import CliRunner

ROLE = "arn:aws:iam::123456789012:role/R"
BASE = ["deploy", "sagemaker", "--model", "org/m", "--image-uri", "img"]


@pytest.mark.parametrize("args, message", [
    (BASE + ["--name", "bad_name!", "--role", ROLE], "invalid endpoint name"),
    (BASE + ["--name", "ok"], "execution role is required"),
    (BASE + ["--name", "ok", "--role", "my-role"], "invalid role"),
    (BASE + ["--name", "ok", "--role", ROLE, "--instance-type", "p4d.24xlarge"], "invalid instance type"),
    (BASE + ["--name", "ok", "--role", ROLE, "--env", "NOEQUALS"], "invalid --env"),
    (["deploy", "docker", "--model", "org/m", "--image", "berth:cpu"], "no Docker engine is reachable"),
    (["deploy", "local", "--model", "org/m", "--name", "bad_name"], "invalid endpoint name"),
    (["invoke", "ep", "--body", "{not json"], "not valid JSON"),
])
def test_bad_input_is_one_line(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_no_credentials_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = CliRunner().invoke(main, ["endpoints", "list", "--region", "us-east-1"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "Unable to locate credentials" in line


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("deploy", "endpoints", "invoke"):
        assert command in result.output
    deploy_help = CliRunner().invoke(main, ["deploy", "--help"]).output
    for target in ("sagemaker", "docker", "local"):
        assert target in deploy_help
