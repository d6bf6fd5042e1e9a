"""Resolve a model source to a local directory: local path, file://, model.tar.gz, s3://, hub id, demo://."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME, resolve_demo_uri
from berth_server.errors import WeightsNotFound
from berth_server.models.archive import extract_archive, is_archive
from berth_server.settings import Settings

ProgressCallback = Callable[[float, str], None]
log = logging.getLogger("berth.sources")
# org/name (or a bare name) as the Hugging Face hub spells repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(source: str, settings: Settings, revision: str | None = None,
                   progress: ProgressCallback | None = None) -> Path:
    """Return a local directory holding the weights for `source`; WeightsNotFound names the URI."""
    report = progress or _log_progress
    if not source:
        # SageMaker copies the model (or the extracted model.tar.gz) here when no HF_MODEL_ID is set.
        source = str(settings.sagemaker_model_dir)
    if source.startswith(DEMO_SCHEME):
        try:
            return resolve_demo_uri(source, settings.home)
        except ValueError as exc:
            raise WeightsNotFound(str(exc)) from None
    if source.startswith("s3://"):
        from berth_server.models.s3 import resolve_s3

        return resolve_s3(source, settings, report)
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and is_archive(path.name):
        stat = path.stat()
        target = settings.home / "cache" / "archives" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return extract_archive(path, target, source)
    if source.startswith(("file://", "/", ".", "~")) or not _HUB_ID.match(source):
        raise WeightsNotFound(f"model weights not found at {source!r}: not a directory")
    return resolve_hub(source, settings, revision, report)


def _log_progress(fraction: float, message: str) -> None:
    log.info("%3.0f%% %s", fraction * 100, message)


def hub_cache_dir(settings: Settings) -> Path | None:
    """BERTH_HOME/cache/huggingface/hub, unless the user pointed huggingface_hub elsewhere (HF_HOME/HF_HUB_CACHE)."""
    from huggingface_hub import constants

    default = Path("~/.cache/huggingface/hub").expanduser()
    if Path(constants.HF_HUB_CACHE).expanduser() != default:
        return None  # huggingface_hub honours the user's own setting
    return settings.home / "cache" / "huggingface" / "hub"


def resolve_hub(repo_id: str, settings: Settings, revision: str | None, progress: ProgressCallback) -> Path:
    """snapshot_download, honouring HF_HUB_OFFLINE, HF_TOKEN and the hub cache (huggingface_hub reads them)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    progress(0.0, f"fetching {repo_id} from the hub (revision {revision or 'main'})")
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(settings),
                                 max_workers=settings.download_workers)
    except LocalEntryNotFoundError:
        raise WeightsNotFound(
            f"model weights not found for {repo_id!r}: not in the local hub cache and the hub is unreachable "
            "or HF_HUB_OFFLINE is set"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise WeightsNotFound(f"model weights not found for {repo_id!r}: {type(exc).__name__} "
                              "(a private or gated repo needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise WeightsNotFound(f"model weights not found for {repo_id!r}: revision {revision!r} does not exist") from None
    except ValueError as exc:
        raise WeightsNotFound(f"model weights not found for {repo_id!r}: {exc}") from None
    progress(1.0, f"{repo_id} is at {path}")
    return Path(path)
