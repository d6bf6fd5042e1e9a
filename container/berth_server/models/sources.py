"""Resolve a model source (local dir, file://, demo://; more schemes arrive with model management) to a local dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME, resolve_demo_uri
from berth_server.errors import WeightsNotFound
from berth_server.settings import Settings

ProgressCallback = Callable[[float, str], None]


def resolve_source(source: str, settings: Settings, revision: str | None = None,
                   progress: ProgressCallback | None = None) -> Path:
    """Return a local directory holding the weights for `source`; WeightsNotFound names the URI."""
    if source.startswith(DEMO_SCHEME):
        try:
            return resolve_demo_uri(source, settings.home)
        except ValueError as exc:
            raise WeightsNotFound(str(exc)) from None
    path = Path(source[len("file://"):]) if source.startswith("file://") else Path(source)
    if path.is_dir():
        return path
    raise WeightsNotFound(f"model weights not found at {source!r}: not a directory")
