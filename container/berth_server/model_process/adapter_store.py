"""The LoRA adapters a model gained at run time (POST /adapters), kept where its next start finds them.

Two files per model, one JSON list of adapters each:
- the run's file, under the runtime dir: every adapter added since the server started, so a model
  process that crashed and was restarted by the launcher serves the same adapters again;
- the persisted file, under BERTH_HOME/adapters: those added with `persist: true`, so a server
  restart (a new container on the same volume) brings them back too.
Launch adapters (LORA_ADAPTERS, peft_model_config) are not stored: the launch config brings them.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from urllib.parse import quote

import msgspec

from berth_server.adapter_specs import AdapterSource
from berth_server.atomic_file import out_of_space, write_atomically
from berth_server.errors import InsufficientStorage

log = logging.getLogger(__name__)
_ADAPTERS = msgspec.json.Decoder(list[AdapterSource])


class AdapterStore:
    """Record and recall one model's run-time adapters."""

    def __init__(self, run_file: Path, persist_file: Path) -> None:
        self.run_file = run_file
        self.persist_file = persist_file
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, uid: str, runtime_dir: Path, home: Path) -> AdapterStore:
        """The store of model `uid` (a uid may hold '://' and '/', so it is quoted into one file name)."""
        name = quote(uid, safe="") + ".json"
        return cls(runtime_dir / "adapters" / name, home / "adapters" / name)

    def load(self) -> list[AdapterSource]:
        """The adapters to apply again: persisted ones, then this run's (a later entry of a name wins)."""
        merged = {a.name: a for path in (self.persist_file, self.run_file) for a in self._read(path)}
        return list(merged.values())

    def record(self, adapter: AdapterSource) -> None:
        """Remember an added adapter (persisted too when it asks; a re-add without persist un-persists it)."""
        with self._lock:
            self._update(self.run_file, adapter.name, adapter)
            self._update(self.persist_file, adapter.name, adapter if adapter.persist else None)

    def forget(self, name: str) -> None:
        """Drop a removed adapter from both files."""
        with self._lock:
            self._update(self.run_file, name, None)
            self._update(self.persist_file, name, None)

    @staticmethod
    def _read(path: Path) -> list[AdapterSource]:
        try:
            return _ADAPTERS.decode(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring the adapter list %s, which cannot be read: %s", path, exc)
            return []

    def _update(self, path: Path, name: str, adapter: AdapterSource | None) -> None:
        kept = [a for a in self._read(path) if a.name != name]
        if adapter is not None:
            kept.append(adapter)
        elif len(kept) == len(self._read(path)):
            return  # nothing to drop: leave the file (or its absence) alone
        try:
            write_atomically(path, msgspec.json.encode(kept))
        except OSError as exc:
            if out_of_space(exc):
                raise InsufficientStorage(f"cannot record adapter {name!r} in {path}: "
                                          f"{os.strerror(exc.errno or 0)}") from None
            raise
