"""Model-management commands mirroring the `xinference` CLI: registrations, register, launch, chat, ..."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx

from berth.registration import MODEL_TYPES

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
# Launching a model may take a while (downloads); the poll below reports progress meanwhile.
_REQUEST_TIMEOUT_S = 60.0
_POLL_INTERVAL_S = 0.5


class ModelsClient:
    """A small httpx client for Berth's Xinference-compatible routes; errors become ClickException."""

    def __init__(self, endpoint: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.endpoint = endpoint.rstrip("/")
        self.http = httpx.Client(base_url=self.endpoint, headers=headers, timeout=_REQUEST_TIMEOUT_S)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; any non-200 is one clear line (the server's "detail")."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach Berth at {self.endpoint}: {exc}") from None
        if response.status_code != 200:
            raise click.ClickException(f"{method} {path} failed ({response.status_code}): {_detail(response)}")
        return response.json() if response.content else None

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each SSE data event (stops at [DONE])."""
        try:
            with self.http.stream("POST", path, json=body, timeout=None) as response:
                if response.status_code != 200:
                    response.read()
                    raise click.ClickException(f"POST {path} failed ({response.status_code}): {_detail(response)}")
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise click.ClickException(f"generation failed: {event.get('detail') or event['error']}")
                    yield event
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach Berth at {self.endpoint}: {exc}") from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:300]


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """--endpoint and --api-key on every command."""
    func = click.option("--api-key", default=None, help="Berth API key (BERTH_API_KEY of the server).")(func)
    return click.option("--endpoint", "-e", default=DEFAULT_ENDPOINT, show_default=True,
                        help="Berth server URL.")(func)


_MODEL_TYPE = click.option("--model-type", "-t", default="LLM", show_default=True,
                           type=click.Choice(list(MODEL_TYPES), case_sensitive=False))


@click.command("registrations")
@_MODEL_TYPE
@_common
def registrations(model_type: str, endpoint: str, api_key: str | None) -> None:
    """List built-in and custom model registrations."""
    rows = ModelsClient(endpoint, api_key).request("GET", f"/v1/model_registrations/{model_type}",
                                                   params={"detailed": "false"})
    click.echo(f"{'Type':<10} {'Name':<40} Builtin")
    for row in rows:
        click.echo(f"{model_type:<10} {row['model_name']:<40} {row['is_builtin']}")


@click.command("register")
@_MODEL_TYPE
@click.option("--file", "-f", "file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The registration JSON (Xinference's version 2 format).")
@click.option("--persist", "-p", is_flag=True, help="Keep the registration across server restarts.")
@_common
def register(model_type: str, file: Path, persist: bool, endpoint: str, api_key: str | None) -> None:
    """Register a custom model from a JSON file."""
    try:
        model = file.read_text()
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    result = ModelsClient(endpoint, api_key).request(
        "POST", f"/v1/model_registrations/{model_type}", json={"model": model, "persist": persist, "worker_ip": None})
    for warning in (result or {}).get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"registered {(result or {}).get('model_name', file.stem)}")


@click.command("unregister")
@_MODEL_TYPE
@click.option("--model-name", "-n", required=True)
@_common
def unregister(model_type: str, model_name: str, endpoint: str, api_key: str | None) -> None:
    """Remove a custom model registration."""
    ModelsClient(endpoint, api_key).request("DELETE", f"/v1/model_registrations/{model_type}/{model_name}")
    click.echo(f"unregistered {model_name}")


@click.command("launch")
@click.option("--model-name", "-n", required=True)
@_MODEL_TYPE
@click.option("--model-engine", "-en", default=None, help="vLLM or Transformers (default: auto).")
@click.option("--model-uid", "-u", default=None)
@click.option("--model-path", default=None, help="Local weights of a built-in family (no registration needed).")
@click.option("--model-format", "-f", default=None)
@click.option("--size-in-billions", "-s", "size", default=None)
@click.option("--quantization", "-q", default=None)
@click.option("--enable-thinking/--disable-thinking", default=None)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the model.")
@_common
def launch(model_name: str, model_type: str, model_engine: str | None, model_uid: str | None,
           model_path: str | None, model_format: str | None, size: str | None, quantization: str | None,
           enable_thinking: bool | None, timeout: float, endpoint: str, api_key: str | None) -> None:
    """Launch a model and show its progress until it is ready."""
    client = ModelsClient(endpoint, api_key)
    body = {"model_name": model_name, "model_type": model_type, "model_engine": model_engine,
            "model_uid": model_uid, "model_path": model_path, "model_format": model_format,
            "model_size_in_billions": size, "quantization": quantization, "enable_thinking": enable_thinking}
    uid = client.request("POST", "/v1/models", params={"wait_ready": "false"},
                         json={k: v for k, v in body.items() if v is not None})["model_uid"]
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        info = client.request("GET", f"/v1/models/{uid}")
        state = info.get("state", "ready")
        if state == "ready":
            break
        if state in ("failed", "stopped"):
            raise click.ClickException(f"model {uid} failed to launch: {info.get('reason') or state}")
        line = f"{state} {100 * float(info.get('progress') or 0.0):.0f}% {info.get('reason') or ''}".strip()
        if line != last:
            click.echo(line, err=True)
            last = line
        if time.monotonic() > deadline:
            raise click.ClickException(f"model {uid} is not ready after {timeout:.0f} s (still {state})")
        time.sleep(_POLL_INTERVAL_S)
    click.echo(f"Model uid: {uid}")


@click.command("list")
@_common
def list_models(endpoint: str, api_key: str | None) -> None:
    """List running models."""
    data = ModelsClient(endpoint, api_key).request("GET", "/v1/models").get("data", [])
    click.echo(f"{'UID':<32} {'Type':<10} {'Name':<32} Ability")
    for model in data:
        click.echo(f"{model['id']:<32} {model.get('model_type', 'LLM'):<10} "
                   f"{model.get('model_name', model['id'])!s:<32} {', '.join(model.get('model_ability') or [])}")


@click.command("terminate")
@click.option("--model-uid", "-u", required=True)
@_common
def terminate(model_uid: str, endpoint: str, api_key: str | None) -> None:
    """Stop a running model (its process exits and its memory is freed)."""
    ModelsClient(endpoint, api_key).request("DELETE", f"/v1/models/{model_uid}")
    click.echo(f"terminated {model_uid}")


@click.command("generate")
@click.option("--model-uid", "-u", required=True)
@click.option("--prompt", "-p", default=None, help="The prompt (default: read stdin).")
@click.option("--max-tokens", default=256, show_default=True, type=int)
@click.option("--stream/--no-stream", default=True, show_default=True)
@_common
def generate(model_uid: str, prompt: str | None, max_tokens: int, stream: bool, endpoint: str,
             api_key: str | None) -> None:
    """Complete a prompt."""
    client = ModelsClient(endpoint, api_key)
    text = prompt if prompt is not None else sys.stdin.read()
    body = {"model": model_uid, "prompt": text, "max_tokens": max_tokens, "stream": stream}
    if not stream:
        click.echo(client.request("POST", "/v1/completions", json=body)["choices"][0]["text"])
        return
    for event in client.stream("/v1/completions", body):
        for choice in event.get("choices", []):
            click.echo(choice.get("text") or "", nl=False)
    click.echo()


@click.command("chat")
@click.option("--model-uid", "-u", required=True)
@click.option("--max-tokens", default=512, show_default=True, type=int)
@click.option("--system", default=None, help="A system prompt.")
@_common
def chat(model_uid: str, max_tokens: int, system: str | None, endpoint: str, api_key: str | None) -> None:
    """Chat interactively (one message per line on stdin; an empty line or EOF ends it)."""
    client = ModelsClient(endpoint, api_key)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("User: ", nl=False)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return
        messages.append({"role": "user", "content": line.rstrip("\n")})
        answer = []
        click.echo("Assistant: ", nl=False)
        body = {"model": model_uid, "messages": messages, "max_tokens": max_tokens, "stream": True}
        for event in client.stream("/v1/chat/completions", body):
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                answer.append(piece)
                click.echo(piece, nl=False)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(answer)})


MODEL_COMMANDS: list[click.Command] = [registrations, register, unregister, launch, list_models, terminate,
                                       generate, chat]
