"""The model table: the launcher writes every model's status to one file; frontend workers read it.

Why a file: a launch, terminate or status change is written (atomically, by rename) before the
launcher answers the control call that caused it, so the very next request on any gunicorn
worker sees it (read-your-writes, BERTH_WORKERS > 1 included). A worker notices a new table
with one stat() call, so no control RPC sits on a generation's path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from berth_server.launch_config import ModelStatus

log = logging.getLogger(__name__)
TABLE_NAME = "models.table"
_RACY_S = 0.1


class TableFile(msgspec.Struct):
    """What the file holds: a version that only grows, and every model's last status."""

    version: int
    models: dict[str, ModelStatus]


def table_path(runtime_dir: Path) -> Path:
    """Where the launcher writes the table (next to the IPC sockets)."""
    return runtime_dir / TABLE_NAME


class TableWriter:
    """The launcher's side: rewrite the whole table on every change (it is small)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0

    def write(self, statuses: Mapping[str, ModelStatus]) -> None:
        """Write the table atomically; a reader sees the old or the new one, never a torn file."""
        self.version += 1
        data = msgspec.json.encode(TableFile(version=self.version, models=dict(statuses)))
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            partial.write_bytes(data)
            os.replace(partial, self.path)
        except OSError as exc:  # the frontend then keeps the last table it read; say so loudly
            log.error("cannot write the model table %s: %s", self.path, exc)


class TableReader:
    """A worker's side: the latest table, re-read only when the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        self._seen: tuple[int, int, int] | None = None
        self._models: dict[str, dict[str, Any]] = {}

    def exists(self) -> bool:
        """Whether the launcher has written a table (test doubles have none)."""
        return self.path.exists()

    def models(self) -> dict[str, dict[str, Any]]:
        """{uid: ModelStatus as builtins} as the launcher last wrote it."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._models
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        # File times are coarse (jiffies) and inodes get reused, so two quick writes of the same size can
        # look alike: a table written in the last moments is re-read regardless (git's "racy" rule).
        if key != self._seen or time.time() - stat.st_mtime < _RACY_S:
            try:
                table = msgspec.json.decode(self.path.read_bytes(), type=TableFile)
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("cannot read the model table %s: %s", self.path, exc)
                return self._models
            self.version = table.version
            self._models = {uid: msgspec.to_builtins(status) for uid, status in table.models.items()}
            self._seen = key
        return self._models
