"""The model registry: built-in families from catalog/*.json plus custom registrations (memory or BERTH_HOME)."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from berth_spec.registration import (
    MODEL_TYPES,
    Registration,
    RegistrationError,
    check_model_type,
    check_name,
    parse_registration,
)

from berth_server.atomic_file import out_of_space, write_atomically
from berth_server.checkpoint import chat_template
from berth_server.errors import Conflict, InsufficientStorage, InvalidRequest, NotFound

# A full disk, a full quota, or a file-size limit: the write cannot succeed, and the client should know.
log = logging.getLogger(__name__)
CATALOG_DIR = Path(__file__).with_name("catalog")


def model_type_or_400(model_type: str | None) -> str:
    """Canonical model type, InvalidRequest when unknown."""
    try:
        return check_model_type(model_type or "LLM")
    except RegistrationError as exc:
        raise InvalidRequest(str(exc), param="model_type") from None


def local_dir(uri: str | None) -> Path | None:
    """The local directory a model_uri points at (plain path or file://), or None for remote sources."""
    if not uri or "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser()


def tokenizer_has_chat_template(model_dir: Path) -> bool:
    """True when the weights in `model_dir` ship a chat template (tokenizer_config.json or a template file)."""
    return chat_template(model_dir) is not None


def check_chat_template(registration: Registration, model_dir: Path | None) -> None:
    """A chat LLM needs a chat_template unless its (local) tokenizer has one; InvalidRequest otherwise."""
    abilities = getattr(registration, "model_ability", [])
    if "chat" not in abilities or getattr(registration, "chat_template", None) or model_dir is None:
        return
    gguf = model_dir.suffix.lower() == ".gguf" or (model_dir.is_dir() and any(model_dir.glob("*.gguf")))
    if model_dir.is_dir() and not gguf and not tokenizer_has_chat_template(model_dir):  # GGUF metadata has one
        raise InvalidRequest(
            f"model {registration.model_name!r} has the chat ability but no chat_template, and the tokenizer "
            f"at {str(model_dir)!r} has none either: add chat_template to the registration",
            param="chat_template",
        )


@dataclass
class Entry:
    """One registration and where it lives."""

    model_type: str
    registration: Registration
    persisted: bool = False


class Registry:
    """Built-in and custom registrations for LLM, embedding and rerank models."""

    def __init__(self, home: Path | None, catalog_dir: Path = CATALOG_DIR) -> None:
        self._builtin: dict[str, dict[str, Registration]] = {t: {} for t in MODEL_TYPES}
        self._custom: dict[str, dict[str, Entry]] = {t: {} for t in MODEL_TYPES}
        self._lock = threading.Lock()
        self._dir = home / "registrations" if home is not None else None
        self._load_catalog(catalog_dir)
        self._load_persisted()

    def _load_catalog(self, catalog_dir: Path) -> None:
        for path in sorted(catalog_dir.glob("*.json")):
            data = json.loads(path.read_text())
            model_type = data.pop("model_type")
            registration = parse_registration(model_type, data, builtin=True)
            self._builtin[model_type][registration.model_name] = registration

    def _load_persisted(self) -> None:
        if self._dir is None:
            return
        for model_type in MODEL_TYPES:
            for path in sorted((self._dir / model_type).glob("*.json")):
                try:
                    registration = parse_registration(model_type, path.read_text())
                except (RegistrationError, OSError) as exc:
                    # One bad file must not stop the server; say which one.
                    log.warning("skipping persisted registration %s: %s", path, exc)
                    continue
                self._custom[model_type][registration.model_name] = Entry(model_type, registration, True)

    def builtin_names(self) -> set[str]:
        """Every built-in model name, over all types."""
        return {name for names in self._builtin.values() for name in names}

    def entries(self, model_type: str) -> list[Entry]:
        """Built-ins first (sorted), then custom registrations (sorted)."""
        model_type = model_type_or_400(model_type)
        builtin = [Entry(model_type, r) for _, r in sorted(self._builtin[model_type].items())]
        with self._lock:
            custom = [e for _, e in sorted(self._custom[model_type].items())]
        return builtin + custom

    def get(self, model_type: str, name: str) -> Entry:
        """One registration; NotFound names it."""
        model_type = model_type_or_400(model_type)
        if name in self._builtin[model_type]:
            return Entry(model_type, self._builtin[model_type][name])
        with self._lock:
            entry = self._custom[model_type].get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not registered as {model_type}")
        return entry

    def register(self, model_type: str, model: str, persist: bool) -> tuple[Registration, list[str]]:
        """Validate and add a custom registration; returns it with warnings about ignored fields."""
        model_type = model_type_or_400(model_type)
        try:
            registration = parse_registration(model_type, model)
        except RegistrationError as exc:
            raise InvalidRequest(str(exc), param="model") from None
        name = registration.model_name
        family = getattr(registration, "model_family", None)
        builtins = self.builtin_names()
        if name in builtins:
            raise Conflict(f"model name {name!r} is a built-in model; choose another name")
        if family is not None and family in builtins:
            raise InvalidRequest(f"model_family {family!r} clashes with a built-in model name", param="model_family")
        for spec in registration.model_specs:
            check_chat_template(registration, local_dir(spec.model_uri))
        with self._lock:
            if any(name in entries for entries in self._custom.values()):
                raise Conflict(f"model {name!r} is already registered; unregister it first")
            if persist:
                self._write(model_type, registration)
            self._custom[model_type][name] = Entry(model_type, registration, persist)
        warnings = registration.warnings()
        for warning in warnings:
            log.warning("registration %s: %s", name, warning)
        return registration, warnings

    def unregister(self, model_type: str, name: str) -> None:
        """Remove a custom registration (and its file)."""
        model_type = model_type_or_400(model_type)
        if name in self._builtin[model_type]:
            raise InvalidRequest(f"model {name!r} is built in and cannot be unregistered", param="model_name")
        with self._lock:
            entry = self._custom[model_type].pop(name, None)
            if entry is None:
                raise NotFound(f"model {name!r} is not registered as {model_type}")
            if entry.persisted and self._dir is not None:
                (self._dir / model_type / f"{check_name(name)}.json").unlink(missing_ok=True)

    def find(self, name: str, model_type: str | None) -> Entry:
        """The registration to launch: by name within `model_type` (LLM when None); NotFound otherwise."""
        return self.get(model_type or "LLM", name)

    def _write(self, model_type: str, registration: Registration) -> None:
        """Persist atomically (a restart finds the old file or the new one)."""
        assert self._dir is not None
        directory = self._dir / model_type
        payload = registration.model_dump_json(indent=2, exclude={"is_builtin"}).encode()
        try:
            write_atomically(directory / f"{check_name(registration.model_name)}.json", payload)
        except OSError as exc:
            if out_of_space(exc):
                raise InsufficientStorage(
                    f"cannot persist registration {registration.model_name!r} under {directory}: "
                    f"{os.strerror(exc.errno or 0)}; nothing was changed") from None
            raise
