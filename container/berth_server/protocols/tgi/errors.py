"""TGI's error shape: {"error", "error_type"}; validation errors are 422 and a timed-out model 424, as TGI answers."""

from __future__ import annotations

from typing import Any

from berth_server.errors import BerthError
from berth_server.protocols.error_shape import ErrorShape


def _body(error: BerthError, status: int) -> dict[str, Any]:
    return {"error": error.message, "error_type": error.error_type, "detail": error.message}


def _stream_event(error: BerthError, status: int) -> dict[str, Any]:
    return {"error": error.message, "error_type": error.error_type}


def _status(error: BerthError) -> int:
    return error.tgi_status if error.tgi_status is not None else error.status


TGI_ERRORS = ErrorShape("tgi", _body, _stream_event, _status)
