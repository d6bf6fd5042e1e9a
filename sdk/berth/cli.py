"""The `berth` command: deploy, list/describe/delete endpoints, invoke; model commands come from cli_models."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from berth.errors import BerthError


def _expected_error(exc: BaseException) -> str | None:
    """A one-line message for errors users cause (bad input, AWS, network); None for bugs."""
    if isinstance(exc, BerthError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if isinstance(exc, (ClientError, BotoCoreError)):
        return str(exc).splitlines()[0]
    import httpx

    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return None


class _Root(click.Group):
    """Root group that turns expected errors into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; translate expected errors into ClickException."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            message = _expected_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Root)
@click.version_option(package_name="berth")
def main() -> None:
    """Deploy Berth (SageMaker, Docker, local), invoke endpoints and manage models."""


def _progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays machine-readable."""
    click.echo(message, err=True)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    """--env K=V, repeated."""
    from berth.validation import parse_env

    return parse_env(pairs)


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options every deploy target takes."""
    func = click.option("--env", "env", multiple=True, metavar="K=V", help="Container env var (repeatable).")(func)
    func = click.option("--model", required=True, help="s3:// prefix, s3://...tar.gz, hub id or local dir.")(func)
    return click.option("--name", default=None, help="Endpoint (or container) name.")(func)


@main.group()
def deploy() -> None:
    """Deploy Berth to SageMaker, a local Docker engine or a local process."""


@deploy.command("sagemaker")
@_common
@click.option("--image-uri", required=True, help="The Berth image in ECR.")
@click.option("--role", default=None, help="SageMaker execution role ARN (required).")
@click.option("--instance-type", default="ml.g5.2xlarge", show_default=True)
@click.option("--instance-count", default=1, show_default=True, type=int)
@click.option("--region", default=None)
@click.option("--health-check-timeout", type=int, default=None, help="Seconds (default: sized from the model).")
@click.option("--download-timeout", type=int, default=None, help="Seconds (default: sized from the model).")
@click.option("--min-instances", type=int, default=None, help="Enable autoscaling from this many instances.")
@click.option("--max-instances", type=int, default=None)
@click.option("--invocations-per-instance", type=float, default=100.0, show_default=True)
@click.option("--copies", type=int, default=None, help="Serve the model as an inference component with this many "
              "copies, spread over the instances.")
@click.option("--wait/--no-wait", default=True, show_default=True)
def deploy_sagemaker_cmd(name: str | None, model: str, env: tuple[str, ...], image_uri: str, role: str | None,
                         instance_type: str, instance_count: int, region: str | None,
                         health_check_timeout: int | None, download_timeout: int | None,
                         min_instances: int | None, max_instances: int | None,
                         invocations_per_instance: float, copies: int | None, wait: bool) -> None:
    """Create model, endpoint config and endpoint; print the endpoint name."""
    from berth.sagemaker_target import deploy_sagemaker

    autoscaling = None
    if min_instances is not None or max_instances is not None:
        low = min_instances or 1
        autoscaling = {"min_instances": low, "max_instances": max_instances or low,
                       "invocations_per_instance": invocations_per_instance}
    predictor = deploy_sagemaker(model=model, endpoint_name=name or "", image_uri=image_uri, role=role,
                                 instance_type=instance_type, instance_count=instance_count, env=_env(env),
                                 region=region, health_check_timeout=health_check_timeout,
                                 download_timeout=download_timeout, wait=wait, autoscaling=autoscaling,
                                 progress=_progress, copies=copies)
    click.echo(predictor.endpoint_name)


def _sagemaker_client(region: str | None) -> Any:
    import boto3

    return boto3.Session(region_name=region).client("sagemaker")


@main.command()
@click.argument("endpoint")
@click.option("--copies", type=int, required=True, help="The number of copies of the model.")
@click.option("--region", default=None)
def scale(endpoint: str, copies: int, region: str | None) -> None:
    """Change the copy count of a model deployed with --copies (its inference component)."""
    from berth.inference_components import InferenceComponents

    InferenceComponents(_sagemaker_client(region), endpoint, progress=_progress).scale(copies)


@deploy.command("docker")
@_common
@click.option("--image-uri", "--image", "image_uri", required=True, help="The Berth image (e.g. berth:cpu).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--gpus", default=None, help="Number of GPUs, or 'all'.")
def deploy_docker_cmd(name: str | None, model: str, env: tuple[str, ...], image_uri: str, port: int,
                      gpus: str | None) -> None:
    """Run the image on the local Docker engine and wait for /ping; print the URL."""
    from berth.docker_target import deploy_docker

    predictor = deploy_docker(model=model, image=image_uri, port=port, gpus=gpus, env=_env(env), name=name)
    click.echo(predictor.base_url)


@deploy.command("local")
@_common
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--runtime-port", type=int, default=0, help="Port of the local SageMaker runtime API (0: any).")
@click.option("--wait/--no-wait", default=True, help="--no-wait: exit once ready (stops the server).")
def deploy_local_cmd(name: str | None, model: str, env: tuple[str, ...], port: int, runtime_port: int,
                     wait: bool) -> None:
    """Run `serve` here (no Docker) plus a local SageMaker runtime API; stop with Ctrl-C."""
    from berth.local_target import deploy_local

    predictor = deploy_local(model=model, port=port, endpoint_name=name or "berth-local", env=_env(env),
                             runtime_port=runtime_port)
    click.echo(json.dumps({"url": predictor.base_url, "endpoint_name": predictor.endpoint_name,
                           "runtime_endpoint_url": predictor.runtime_endpoint_url}))
    try:
        if wait:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            while not stop.wait(1.0) and predictor.process.poll() is None:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        predictor.delete()


@main.group()
def endpoints() -> None:
    """List, describe and delete SageMaker endpoints."""


@endpoints.command("list")
@click.option("--region", default=None)
def endpoints_list(region: str | None) -> None:
    """One line per endpoint: name and status."""
    from berth.sagemaker_target import list_endpoints

    for endpoint in list_endpoints(region):
        click.echo(f"{endpoint['EndpointName']}\t{endpoint['EndpointStatus']}")


@endpoints.command("describe")
@click.argument("name")
@click.option("--region", default=None)
def endpoints_describe(name: str, region: str | None) -> None:
    """The endpoint, its config and models, as JSON."""
    from berth.sagemaker_target import describe

    described = describe(name, region)
    for part in ("endpoint", "config"):
        described[part].pop("ResponseMetadata", None)
    for model in described["models"]:
        model.pop("ResponseMetadata", None)
    click.echo(json.dumps(described, indent=2, default=str))


@endpoints.command("delete")
@click.argument("name")
@click.option("--region", default=None)
def endpoints_delete(name: str, region: str | None) -> None:
    """Delete the endpoint, its endpoint config and its models."""
    from berth.sagemaker_target import SageMakerEndpoint
    from berth.validation import endpoint_name

    SageMakerEndpoint(endpoint_name(name), region=region, progress=_progress).delete()
    click.echo(f"deleted {name}")


@main.command()
@click.argument("name")
@click.option("--body", required=True, help="JSON request body.")
@click.option("--stream", is_flag=True, help="Use InvokeEndpointWithResponseStream; print one event per line.")
@click.option("--region", default=None)
@click.option("--endpoint-url", default=None, help="sagemaker-runtime URL (e.g. a local deployment's).")
def invoke(name: str, body: str, stream: bool, region: str | None, endpoint_url: str | None) -> None:
    """Invoke a SageMaker endpoint (or a local one via --endpoint-url) and print the reply."""
    import boto3

    from berth.errors import ValidationError
    from berth.predictor import RuntimePredictor

    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--body is not valid JSON: {exc}") from None
    client = boto3.Session(region_name=region).client("sagemaker-runtime", endpoint_url=endpoint_url)
    predictor = RuntimePredictor(name, client)
    if stream:
        for event in predictor.predict_stream(payload):
            click.echo(json.dumps(event))
    else:
        click.echo(json.dumps(predictor.predict(payload)))


def _attach_model_commands() -> None:
    """Add the model-management commands (register, launch, ...) when that module is present."""
    try:
        from berth.cli_models import MODEL_COMMANDS
    except ModuleNotFoundError as exc:
        if exc.name != "berth.cli_models":
            raise
        return
    commands = MODEL_COMMANDS.values() if isinstance(MODEL_COMMANDS, dict) else MODEL_COMMANDS
    for command in commands:
        main.add_command(command)
    from berth.cli_adapters import adapters

    main.add_command(adapters)


_attach_model_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
