"""Ollama's error shape: {"error": "..."} (the ollama client raises ResponseError with it), in a body or as a stream's last line."""

from __future__ import annotations

from typing import Any

from berth_server.errors import BerthError
from berth_server.protocols.error_shape import ErrorShape


def _body(error: BerthError, status: int) -> dict[str, Any]:
    return {"error": error.message, "detail": error.message}


def _stream_event(error: BerthError, status: int) -> dict[str, Any]:
    # The ollama client raises on any NDJSON line with a truthy "error".
    return {"error": error.message}


OLLAMA_ERRORS = ErrorShape("ollama", _body, _stream_event)
