"""Anthropic's error shape: {"type": "error", "error": {"type", "message"}}, with Anthropic's status for each type.

Anthropic's types and statuses: invalid_request_error 400, authentication_error 401, permission_error
403, not_found_error 404, request_too_large 413, rate_limit_error 429, api_error 500, timeout_error
504, overloaded_error 529. A full server (Berth's 429 at MAX_CONCURRENT_REQUESTS) and a model that is
still loading (503) are what Anthropic calls overloaded: both answer 529 overloaded_error, which the
anthropic SDK and Claude Code retry (Retry-After is kept).
"""

from __future__ import annotations

from typing import Any

from berth_server.errors import BerthError, NotReady, Overloaded
from berth_server.protocols.error_shape import ErrorShape

OVERLOADED_STATUS = 529
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    OVERLOADED_STATUS: "overloaded_error",
}


def status_of(error: BerthError) -> int:
    """The HTTP status Anthropic would answer this error with."""
    return OVERLOADED_STATUS if isinstance(error, (Overloaded, NotReady)) else error.status


def error_type(status: int) -> str:
    """Anthropic's error type for a status: its own table, else invalid_request_error (4xx) or api_error."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


def _error(error: BerthError, status: int) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": error.message}}


def _body(error: BerthError, status: int) -> dict[str, Any]:
    # "detail" as on every Berth error body (the OpenAPI description promises it); the SDK reads "error".
    return {**_error(error, status), "detail": error.message}


ANTHROPIC_ERRORS = ErrorShape("anthropic", _body, _error, status_of)
