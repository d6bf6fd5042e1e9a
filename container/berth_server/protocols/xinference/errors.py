"""Xinference's error shape: FastAPI's {"detail"} (xinference-client raises with it), plus "error"."""

from __future__ import annotations

from typing import Any

from berth_server.errors import BerthError
from berth_server.protocols.error_shape import ErrorShape


def _body(error: BerthError, status: int) -> dict[str, Any]:
    return {"detail": error.message, "error": error.message}


def _stream_event(error: BerthError, status: int) -> dict[str, Any]:
    return {"error": error.message, "error_type": error.error_type}


XINFERENCE_ERRORS = ErrorShape("xinference", _body, _stream_event)
