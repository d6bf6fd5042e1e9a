"""`berth adapters add|list|remove`: LoRA adapters on a running Berth (HTTP) or a SageMaker endpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from berth.cli_models import DEFAULT_ENDPOINT, ModelsClient


def _target(func: Callable[..., Any]) -> Callable[..., Any]:
    """--endpoint (a Berth URL) or --sagemaker-endpoint (inference components), and --region."""
    func = click.option("--region", default=None, help="AWS region (with --sagemaker-endpoint).")(func)
    func = click.option("--sagemaker-endpoint", default=None,
                        help="A SageMaker endpoint deployed with adapters: use inference components.")(func)
    func = click.option("--api-key", default=None, help="Berth API key (BERTH_API_KEY of the server).")(func)
    return click.option("--endpoint", "-e", default=DEFAULT_ENDPOINT, show_default=True,
                        help="Berth's base URL.")(func)


def _components(name: str, region: str | None) -> Any:
    import boto3

    from berth.inference_components import InferenceComponents

    return InferenceComponents(boto3.Session(region_name=region).client("sagemaker"), name, poll_s=10.0,
                               progress=lambda message: click.echo(message, err=True))


@click.group()
def adapters() -> None:
    """LoRA adapters: add, list, remove."""


@adapters.command("add")
@click.argument("name")
@click.argument("src")
@click.option("--pin", is_flag=True, help="Keep it resident on the device.")
@click.option("--persist", is_flag=True, help="Berth server: register it again after a server restart.")
@click.option("--wait/--no-wait", default=True, help="SageMaker: wait until the component is InService.")
@_target
def add(name: str, src: str, pin: bool, persist: bool, wait: bool, endpoint: str, api_key: str | None,
        sagemaker_endpoint: str | None, region: str | None) -> None:
    """Attach adapter NAME from SRC (a folder, s3:// prefix or .tar.gz; on SageMaker an s3:// .tar.gz)."""
    if sagemaker_endpoint:
        components = _components(sagemaker_endpoint, region)
        components.add_adapter(name, src)
        if wait:
            components.wait(name)
    else:
        client = ModelsClient(endpoint, api_key)
        response = client.http.post("/adapters", json={"name": name, "src": src, "preload": True, "pin": pin,
                                                        "persist": persist})
        if response.status_code != 200:
            raise click.ClickException(f"POST /adapters failed ({response.status_code}): {response.text[:300]}")
    click.echo(f"Adapter {name} registered")


@adapters.command("list")
@_target
def list_(endpoint: str, api_key: str | None, sagemaker_endpoint: str | None, region: str | None) -> None:
    """List the attached adapters (JSON)."""
    if sagemaker_endpoint:
        click.echo(json.dumps(_components(sagemaker_endpoint, region).adapters(), indent=2))
    else:
        click.echo(json.dumps(ModelsClient(endpoint, api_key).request("GET", "/adapters"), indent=2))


@adapters.command("remove")
@click.argument("name")
@_target
def remove(name: str, endpoint: str, api_key: str | None, sagemaker_endpoint: str | None,
           region: str | None) -> None:
    """Detach adapter NAME."""
    if sagemaker_endpoint:
        _components(sagemaker_endpoint, region).remove(name)
    else:
        response = ModelsClient(endpoint, api_key).http.delete(f"/adapters/{name}")
        if response.status_code != 200:
            raise click.ClickException(f"DELETE /adapters/{name} failed ({response.status_code}): "
                                       f"{response.text[:300]}")
    click.echo(f"Adapter {name} unregistered")
