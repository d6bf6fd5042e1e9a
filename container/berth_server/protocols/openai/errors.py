"""OpenAI's error shape: {"error": {"message", "type", "param", "code"}}, also used by /v1/embeddings."""

from __future__ import annotations

from typing import Any

from berth_server.errors import BerthError
from berth_server.protocols.error_shape import ErrorShape


def _error_object(error: BerthError, status: int) -> dict[str, Any]:
    return {"message": error.message, "type": error.openai_type, "param": error.param,
            "code": error.code if error.code is not None else status}


def _body(error: BerthError, status: int) -> dict[str, Any]:
    return {"error": _error_object(error, status), "detail": error.message}


def _stream_event(error: BerthError, status: int) -> dict[str, Any]:
    # The openai client raises APIError with error["message"] when "error" is an object.
    return {"error": _error_object(error, status), "error_type": error.error_type, "detail": error.message}


OPENAI_ERRORS = ErrorShape("openai", _body, _stream_event)
