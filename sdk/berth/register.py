"""berth.register_model: upload weights to S3 as a plain prefix, build the v2 JSON, register it with a Berth."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from berth.errors import BerthError, ValidationError
from berth.validation import guess_size_billions


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ValidationError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def upload_directory(local_dir: str | Path, s3_uri: str, workers: int = 8, s3_client: Any = None,
                     region: str | None = None) -> list[str]:
    """Upload every file under local_dir to s3_uri, keeping relative paths, in parallel; return the keys."""
    root = Path(local_dir)
    if not root.is_dir():
        raise ValidationError(f"{root} is not a directory")
    bucket, prefix = split_s3_uri(s3_uri)
    if s3_client is None:
        import boto3

        s3_client = boto3.Session(region_name=region).client("s3")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    keys = [prefix + p.relative_to(root).as_posix() for p in files]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # list() re-raises the first upload error here instead of dropping it.
        list(pool.map(lambda pair: s3_client.upload_file(str(pair[0]), bucket, pair[1]), zip(files, keys)))
    return keys


def _chat_template(local_dir: Path | None) -> str | None:
    """The chat template a local checkpoint ships in tokenizer_config.json, if any."""
    if local_dir is None:
        return None
    config = local_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text()).get("chat_template")
    return template if isinstance(template, str) else None


def build_registration(model_name: str, *, model_uri: str | None = None, model_id: str | None = None,
                       model_family: str | None = None, context_length: int = 2048,
                       chat_template: str | None = None, size_billions: float | None = None,
                       model_type: str = "LLM", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Xinference version-2 registration JSON for one custom model (one pytorch spec)."""
    spec: dict[str, Any] = {"model_format": "pytorch", "model_hub": "huggingface", "model_id": model_id,
                            "model_uri": model_uri, "model_revision": None, "quantization": "none"}
    reg: dict[str, Any] = {"version": 2, "model_name": model_name, "model_specs": [spec], "is_builtin": False}
    if model_type == "LLM":
        guesses = (guess_size_billions(text) for text in (model_id or "", (model_uri or "").rstrip("/"), model_name))
        size = size_billions if size_billions is not None else next((g for g in guesses if g is not None), None)
        spec["model_size_in_billions"] = _size_text(size)
        reg.update({"context_length": context_length, "model_family": model_family or model_name,
                    "model_lang": ["en"], "chat_template": chat_template,
                    "model_ability": ["generate", "chat"] if chat_template else ["generate"]})
    reg.update(extra or {})
    return reg


def _size_text(size: float | None) -> int | str:
    """Xinference writes sizes as ints or "0_5"-style strings."""
    if size is None:
        return 0
    return int(size) if float(size).is_integer() else str(size).replace(".", "_")


def validate_registration(model_type: str, registration: dict[str, Any]) -> dict[str, Any]:
    """Validate with berth.registration's pydantic models; RegistrationError is a ValidationError here."""
    try:
        from berth.registration import RegistrationError, parse_registration
    except ImportError:  # the schema module is optional at build time; the server validates again
        return registration
    try:
        parse_registration(model_type, registration)
    except RegistrationError as exc:
        raise ValidationError(str(exc)) from None
    return registration


def register_model(model_name: str, source: str | Path, *, berth_url: str | None = None,
                   s3_uri: str | None = None, model_type: str = "LLM", persist: bool = True,
                   model_family: str | None = None, context_length: int = 2048,
                   chat_template: str | None = None, extra: dict[str, Any] | None = None,
                   region: str | None = None, api_key: str | None = None, upload_workers: int = 8,
                   s3_client: Any = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """Register a custom model whose weights are a local dir (uploaded to s3_uri), an s3:// prefix or a hub id.

    Returns the registration dict; posts it to `berth_url`'s /v1/model_registrations/{model_type} when given.
    """
    local = Path(str(source)).expanduser()
    model_uri: str | None = None
    model_id: str | None = None
    if local.is_dir():
        if not s3_uri:
            raise ValidationError(f"{local} is a local directory: pass s3_uri to upload it to")
        upload_directory(local, s3_uri, upload_workers, s3_client, region)
        model_uri = s3_uri.rstrip("/") + "/"
    elif str(source).startswith("s3://"):
        model_uri = str(source)
    elif str(source):
        model_id = str(source)
    else:
        raise ValidationError("a model source is required: a local directory, an s3:// prefix or a hub id")
    registration = build_registration(
        model_name, model_uri=model_uri, model_id=model_id, model_family=model_family,
        context_length=context_length, chat_template=chat_template or _chat_template(local if local.is_dir() else None),
        model_type=model_type, extra=extra)
    validate_registration(model_type, registration)
    if berth_url:
        post_registration(berth_url, model_type, registration, persist, api_key, timeout_s)
    return registration


def post_registration(berth_url: str, model_type: str, registration: dict[str, Any], persist: bool = True,
                      api_key: str | None = None, timeout_s: float = 60.0) -> None:
    """POST {"model": <json string>, "persist": bool} as xinference-client does; raise with the server's detail."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{berth_url.rstrip('/')}/v1/model_registrations/{model_type}"
    try:
        reply = httpx.post(url, json={"model": json.dumps(registration), "persist": persist},
                           headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BerthError(f"cannot reach Berth at {berth_url}: {exc}") from exc
    if reply.status_code != 200:
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text
        raise BerthError(f"registration rejected (HTTP {reply.status_code}): {detail}")
