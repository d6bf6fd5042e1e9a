"""s3:// sources: parallel boto3 downloads of a prefix, or of one model.tar.gz, cached under BERTH_HOME."""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from berth_server.errors import InvalidRequest, WeightsNotFound
from berth_server.models.archive import extract_archive, is_archive, safe_join
from berth_server.settings import Settings

ProgressCallback = Callable[[float, str], None]


# S3's bucket naming rules (and never '.' or '..', which would name a folder of the cache itself).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key/prefix -> ("bucket", "key/prefix"); InvalidRequest for a bucket S3 would not allow."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise WeightsNotFound(f"model weights not found at {uri!r}: no bucket in the URI")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidRequest(f"{uri!r}: {bucket!r} is not a valid S3 bucket name")
    return bucket, key


def _client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    # endpoint_url None lets boto3 apply its own defaults (AWS_ENDPOINT_URL, the region's endpoint).
    config = Config(max_pool_connections=max(10, settings.download_workers * 2), retries={"max_attempts": 5})
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def _explain(uri: str, exc: Exception) -> WeightsNotFound:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    return WeightsNotFound(f"model weights not found at {uri!r}: {code or type(exc).__name__}: {exc}")


def _download(client: Any, bucket: str, key: str, size: int, target: Path) -> None:
    """One object, written to a temp name and renamed so a crash never leaves a half file in the cache."""
    if target.is_file() and target.stat().st_size == size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}-{threading.get_ident()}")
    client.download_file(bucket, key, str(partial))
    os.replace(partial, target)


def _list(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                objects.append((item["Key"], int(item["Size"])))
    return objects


def resolve_s3(uri: str, settings: Settings, progress: ProgressCallback, only: str | None = None) -> Path:
    """Download s3://bucket/prefix/ (every object under it), s3://bucket/…/model.tar.gz (then extract),
    or one .gguf file (s3://…/x.gguf, or the object under the prefix matching `only`); return its local path."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    if only or key.lower().endswith(".gguf"):
        return _resolve_s3_file(uri, settings, progress, only)
    cache = settings.home / "cache" / "s3" / bucket
    client = _client(settings)
    try:
        if is_archive(key):
            archive = safe_join(cache, key, uri)
            head = client.head_object(Bucket=bucket, Key=key)
            progress(0.0, f"downloading {uri} ({head['ContentLength']} bytes)")
            _download(client, bucket, key, int(head["ContentLength"]), archive)
            progress(0.9, f"extracting {uri}")
            return extract_archive(archive, archive.with_name(archive.name + ".extracted"), uri)
        prefix = key.rstrip("/") + "/" if key else ""
        objects = _list(client, bucket, prefix)
        if not objects:
            raise WeightsNotFound(f"model weights not found at {uri!r}: no objects under that prefix")
        total = sum(size for _, size in objects) or 1
        target_dir = safe_join(cache, prefix, uri)
        # Every object's local name is checked before anything is written.
        targets = {name: safe_join(target_dir, name[len(prefix):], uri) for name, _ in objects}
        done = [0]
        lock = threading.Lock()

        def fetch(item: tuple[str, int]) -> None:
            name, size = item
            _download(client, bucket, name, size, targets[name])
            with lock:
                done[0] += size
                progress(done[0] / total, f"downloaded {name} ({done[0]}/{total} bytes)")

        progress(0.0, f"downloading {len(objects)} objects ({total} bytes) from {uri} "
                      f"with {settings.download_workers} threads")
        with ThreadPoolExecutor(max_workers=settings.download_workers) as pool:
            list(pool.map(fetch, objects))
        return target_dir
    except (ClientError, BotoCoreError) as exc:
        raise _explain(uri, exc) from None


def _resolve_s3_file(uri: str, settings: Settings, progress: ProgressCallback, only: str | None) -> Path:
    """One object: the URI's own key (a .gguf file), or the one under the URI's prefix that matches `only`."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    client = _client(settings)
    try:
        if only:
            prefix = key.rstrip("/") + "/" if key else ""
            names = [(name, size) for name, size in _list(client, bucket, prefix)
                     if fnmatch.fnmatch(name[len(prefix):].lower(), only.lower())]
            if len(names) != 1:
                found = "no object" if not names else f"{len(names)} objects"
                raise WeightsNotFound(f"model weights not found: {found} under {uri!r} match {only!r}")
            key, size = names[0]
        else:
            size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        target = settings.home / "cache" / "s3" / bucket / key
        progress(0.0, f"downloading s3://{bucket}/{key} ({size} bytes)")
        _download(client, bucket, key, size, target)
        progress(1.0, f"s3://{bucket}/{key} is at {target}")
        return target
    except (ClientError, BotoCoreError) as exc:
        raise _explain(uri, exc) from None
