"""BERTH_MODEL_ROOTS: when set, a launch may only read local weights from under these folders."""

from __future__ import annotations

from pathlib import Path

from berth_server.errors import InvalidRequest
from berth_server.settings import Settings

# Sources that never name a local folder.
_REMOTE_SCHEMES = ("s3://", "demo://", "hf://", "http://", "https://")


def local_path(source: str) -> Path | None:
    """The local path a source names (a path, file://, or a relative name that exists here), else None."""
    if source.startswith(_REMOTE_SCHEMES):
        return None
    path = Path(source.removeprefix("file://")).expanduser()
    if source.startswith(("file://", "/", ".", "~")) or path.exists():
        return path
    return None  # a hub id


def check_model_roots(settings: Settings, source: str | None, param: str = "model_path") -> None:
    """InvalidRequest naming `param` when roots are set and `source` is local but under none of them.

    Paths are resolved first, so '..' and symlinks that lead out of a root are refused too.
    """
    if not settings.model_roots or not source:
        return
    path = local_path(source)
    if path is None:
        return
    resolved = path.resolve()
    for root in settings.model_roots:
        if resolved == root.resolve() or root.resolve() in resolved.parents:
            return
    roots = ", ".join(str(root) for root in settings.model_roots)
    raise InvalidRequest(f"{source!r} is outside the folders models may be read from (BERTH_MODEL_ROOTS: {roots})",
                         param=param)
