"""Resolve a model source to local weights: a directory, or one .gguf file (local, s3://, a hub repo's file).

Sources: local path, file://, model.tar.gz, s3://, hub id, demo://. `gguf_file` names the GGUF file
inside a folder, an s3:// prefix or a hub repo; it may hold * wildcards ("*Q4_K_M*.gguf").
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME
from berth_server.errors import WeightsNotFound
from berth_server.models.archive import extract_archive, is_archive
from berth_server.models.demo_sources import resolve_demo_uri
from berth_server.settings import Settings

ProgressCallback = Callable[[float, str], None]
log = logging.getLogger("berth.sources")
# org/name (or a bare name) as the Hugging Face hub spells repo ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# llama.cpp quantization names (Q4_K_M, IQ2_XS, Q8_0, F16, ...), as GGUF file names carry them.
GGUF_QUANTIZATION = re.compile(r"^(I?Q\d|TQ\d|F16$|BF16$|F32$)", re.IGNORECASE)


def resolve_source(source: str, settings: Settings, revision: str | None = None,
                   progress: ProgressCallback | None = None, gguf_file: str | None = None) -> Path:
    """Return the local directory (or .gguf file) holding the weights for `source`; WeightsNotFound names the URI."""
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

        return resolve_s3(source, settings, report, only=gguf_file)
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        return pick_gguf(path, gguf_file, source) if gguf_file else path
    if path.is_file() and is_gguf(path.name):
        return path
    if path.is_file() and is_archive(path.name):
        stat = path.stat()
        target = settings.home / "cache" / "archives" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return extract_archive(path, target, source)
    if source.startswith(("file://", "/", ".", "~")) or not _HUB_ID.match(source):
        what = "no such .gguf file" if is_gguf(source) else "not a directory"
        raise WeightsNotFound(f"model weights not found at {source!r}: {what}")
    if gguf_file:
        return resolve_hub_file(source, gguf_file, settings, revision, report)
    return resolve_hub(source, settings, revision, report)


def single_file_for(quantization: str | None, source: str) -> tuple[str | None, str | None]:
    """(file pattern, quantization left for the engine) of HF_MODEL_QUANTIZE: a GGUF quantization name
    (Q4_K_M) picks that file of a repo or folder of GGUF files, as Xinference's quantization does; any
    other quantization is the engine's (awq, fp8, ...)."""
    if quantization and GGUF_QUANTIZATION.match(quantization) and not is_gguf(source):
        return f"*{quantization}*.gguf", None
    return None, quantization


def is_gguf(name: str) -> bool:
    """Whether a file name is a GGUF file's."""
    return name.lower().endswith(".gguf")


def pick_gguf(folder: Path, pattern: str, source: str) -> Path:
    """The one file in `folder` whose name matches `pattern` (case-insensitive); WeightsNotFound lists the others."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and is_gguf(p.name))
    found = [name for name in files if fnmatch.fnmatch(name.lower(), pattern.lower())]
    if len(found) != 1:
        what = "no GGUF file" if not found else f"{len(found)} GGUF files"
        raise WeightsNotFound(f"model weights not found: {what} in {source!r} match {pattern!r}; "
                              f"it holds {', '.join(files) or 'no .gguf file'}")
    return folder / found[0]


def resolve_hub_file(repo_id: str, pattern: str, settings: Settings, revision: str | None,
                     progress: ProgressCallback) -> Path:
    """One GGUF file of a hub repo (hf_hub_download, honouring HF_HUB_OFFLINE and the cache); wildcards list the repo."""
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        name = pattern
        if any(ch in pattern for ch in "*?["):
            files = [f for f in list_repo_files(repo_id, revision=revision) if is_gguf(f)]
            found = [f for f in files if fnmatch.fnmatch(f.lower(), pattern.lower())]
            if len(found) != 1:
                raise WeightsNotFound(f"model weights not found: {len(found)} files of {repo_id!r} match "
                                      f"{pattern!r}; it holds {', '.join(files) or 'no .gguf file'}")
            name = found[0]
        progress(0.0, f"fetching {name} from {repo_id} (revision {revision or 'main'})")
        path = hf_hub_download(repo_id, name, revision=revision, cache_dir=hub_cache_dir(settings))
    except LocalEntryNotFoundError:
        raise WeightsNotFound(f"model weights not found for {repo_id!r}/{pattern}: not in the local hub cache and "
                              "the hub is unreachable or HF_HUB_OFFLINE is set") from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        raise WeightsNotFound(f"model weights not found for {repo_id!r}/{pattern}: {exc}") from None
    progress(1.0, f"{repo_id}/{name} is at {path}")
    return Path(path)


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
