"""The one place where errors become HTTP replies, shaped by route family (openai, tgi, xinference).

Views hold no try/except: a BerthError (or a werkzeug HTTPException, or anything else) raised
anywhere in a request lands here. The family decides the body shape and, for validation
errors, the status (400 on OpenAI routes, 422 on TGI routes).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from berth_server.errors import (
    BerthError,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)

Family = Literal["openai", "tgi", "xinference"]
log = logging.getLogger(__name__)

# /v1 paths that belong to Xinference's management API rather than OpenAI's.
_XINFERENCE_PREFIXES = ("/v1/model_registrations", "/v1/cluster", "/v1/models/")
# Statuses where a retry by the client cannot help (the openai client retries 5xx twice otherwise).
_NO_RETRY_TYPES = (GenerationFailed, InvalidRequest)


class MethodNotAllowed(BerthError):
    """The route exists but not with this HTTP method."""

    status = 405
    error_type = "validation"
    openai_type = "invalid_request_error"


class RouteNotFound(NotFound):
    """No route matches the path."""

    code = None  # type: ignore[assignment]  # not a model: no model_not_found code


def family_for_request() -> Family:
    """Route family of the current request: g.berth_family, else the blueprint's, else by path."""
    if not has_request_context():
        return "openai"
    chosen = g.get("berth_family")
    if chosen:
        return chosen
    if request.blueprint:
        bp = current_app.blueprints.get(request.blueprint.split(".")[0])
        family = getattr(bp, "berth_family", None)
        if family:
            return family
    path = request.path
    if path.startswith("/v1/"):
        if path.startswith(_XINFERENCE_PREFIXES) or (path == "/v1/models" and request.method == "POST"):
            return "xinference"
        return "openai"
    return "tgi"


def error_body(error: BerthError, family: Family) -> dict[str, Any]:
    """The JSON body for an error on a route family; every body has "error" and "detail"."""
    message = error.message
    if family == "openai":
        return {
            "error": {
                "message": message,
                "type": error.openai_type,
                "param": error.param,
                "code": error.code if error.code is not None else error.status_for("openai"),
            },
            "detail": message,
        }
    if family == "tgi":
        return {"error": message, "error_type": error.error_type, "detail": message}
    return {"detail": message, "error": message}


def stream_error_event(error: BerthError, family: Family) -> dict[str, Any]:
    """The payload of the final SSE event when a stream fails after it started."""
    payload: dict[str, Any] = {"error": error.message, "error_type": error.error_type}
    if family == "openai":
        # The openai client raises APIError with error["message"] when "error" is an object.
        payload["error"] = error_body(error, family)["error"]
        payload["detail"] = error.message
    return payload


def error_response(error: BerthError, family: Family | None = None) -> Response:
    """Build the full reply (status, body, Retry-After, x-should-retry) for a typed error."""
    family = family or family_for_request()
    status = error.status_for(family)
    response = jsonify(error_body(error, family))
    response.status_code = status
    for name, value in error.headers.items():
        response.headers[name] = value
    if status >= 500 and (isinstance(error, _NO_RETRY_TYPES) or status == 500):
        response.headers["x-should-retry"] = "false"
    return response


def _from_http_exception(exc: HTTPException) -> BerthError:
    """Map werkzeug's routing/size errors to typed errors."""
    code = exc.code or 500
    if code == 404:
        return RouteNotFound(f"{request.method} {request.path}: no such route")
    if code == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if code == 413:
        return PayloadTooLarge(f"request body is larger than {current_app.config.get('MAX_CONTENT_LENGTH')} bytes")
    if code == 400:
        return InvalidRequest(exc.description or "bad request")
    error = BerthError(exc.description or exc.name)
    error.status = code
    return error


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every exception into a family-shaped JSON reply."""

    @app.errorhandler(BerthError)
    def _berth(error: BerthError) -> Response:
        if error.status_for(family_for_request()) >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return error_response(_from_http_exception(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged with its traceback here; the body never carries it.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GenerationFailed(f"internal error: {type(exc).__name__}"))
