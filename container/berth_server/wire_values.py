"""Plain values in request bodies and query strings, read the same way by every API that takes them."""

from __future__ import annotations

from typing import Any

from berth_server.errors import InvalidRequest


def as_bool(value: Any, name: str) -> bool:
    """A JSON/query boolean ("false" counts as False); InvalidRequest naming `name` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise InvalidRequest(f"{name} must be true or false, not {value!r}", param=name)
