"""The one place where errors become HTTP replies, in the wire's own shape (protocols/error_shape.py).

Views hold no try/except: a BerthError (or a werkzeug HTTPException, or anything else) raised
anywhere in a request lands here. The request's ErrorShape, declared by its protocol, decides the
body and the status (400 on OpenAI routes, 422 on TGI routes).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from berth_server.errors import (
    BerthError,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from berth_server.protocols.anthropic.errors import ANTHROPIC_ERRORS
from berth_server.protocols.error_shape import ErrorShape
from berth_server.protocols.ollama.errors import OLLAMA_ERRORS
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.tgi.errors import TGI_ERRORS
from berth_server.protocols.xinference.errors import XINFERENCE_ERRORS

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


def shape_for_request() -> ErrorShape:
    """The error shape of the current request: g.berth_errors, else its blueprint's, else by path."""
    if not has_request_context():
        return OPENAI_ERRORS
    chosen = g.get("berth_errors")
    if chosen is not None:
        return chosen
    if request.blueprint:
        bp = current_app.blueprints.get(request.blueprint.split(".")[0])
        shape = getattr(bp, "berth_errors", None)
        if shape is not None:
            return shape
    path = request.path  # no route matched: guess the wire from the path
    if path.startswith("/v1/"):
        if path == "/v1/messages" or path.startswith("/v1/messages/"):
            return ANTHROPIC_ERRORS
        if path.startswith(_XINFERENCE_PREFIXES) or (path == "/v1/models" and request.method == "POST"):
            return XINFERENCE_ERRORS
        return OPENAI_ERRORS
    if path.startswith("/api/"):
        return OLLAMA_ERRORS
    return TGI_ERRORS


def stream_error_event(error: BerthError, shape: ErrorShape | None = None) -> dict[str, Any]:
    """The payload of the final event when a stream fails after it started."""
    shape = shape or shape_for_request()
    return shape.stream_event(error, shape.status(error))


def error_response(error: BerthError, shape: ErrorShape | None = None) -> Response:
    """Build the full reply (status, body, Retry-After, x-should-retry) for a typed error."""
    shape = shape or shape_for_request()
    status = shape.status(error)
    response = jsonify(shape.body(error, status))
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
    """Install the handlers that turn every exception into a JSON reply in the wire's shape."""

    @app.errorhandler(BerthError)
    def _berth(error: BerthError) -> Response:
        shape = shape_for_request()
        if shape.status(error) >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, error.message)
        return error_response(error, shape)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return error_response(_from_http_exception(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged with its traceback here; the body never carries it.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GenerationFailed(f"internal error: {type(exc).__name__}"))
