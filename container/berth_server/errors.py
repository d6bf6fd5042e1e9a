"""Typed errors. Each carries its HTTP status and type strings; http/errors.py maps them to bodies.

Validation errors are 400 on OpenAI routes and 422 on TGI routes (each protocol's convention),
so an error holds both statuses and the wire's ErrorShape picks one (protocols/error_shape.py). Anything that is not a
BerthError is a 500, never a 4xx.
"""

from __future__ import annotations

from collections.abc import Mapping

from berth_server.canonical import ErrorRecord, Failure


class BerthError(Exception):
    """Base: message, OpenAI status/type, TGI status/error_type, optional param and headers."""

    status: int = 500
    tgi_status: int | None = None  # None: same as status
    error_type: str = "generation"  # TGI's error_type
    openai_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


class InvalidRequest(BerthError):
    """A field is missing, malformed or out of range."""

    status = 400
    tgi_status = 422
    error_type = "validation"
    openai_type = "invalid_request_error"


class InputTooLong(InvalidRequest):
    """The prompt, or prompt + max new tokens, exceeds a configured limit."""

    code = "context_length_exceeded"


class Unauthorized(BerthError):
    """Missing or wrong API key."""

    status = 401
    error_type = "authentication"
    openai_type = "authentication_error"


class NotFound(BerthError):
    """An unknown model, uid, registration or route."""

    status = 404
    error_type = "not_found"
    openai_type = "not_found_error"
    code: str | None = "model_not_found"


class Conflict(BerthError):
    """A duplicate uid or registration name."""

    status = 409
    error_type = "validation"
    openai_type = "invalid_request_error"


class PayloadTooLarge(BerthError):
    """The request body is over the 6 MiB SageMaker limit."""

    status = 413
    error_type = "validation"
    openai_type = "invalid_request_error"


class Overloaded(BerthError):
    """Too many concurrent requests; the client should retry later."""

    status = 429
    error_type = "overloaded"
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int = 1, param: str | None = None):
        super().__init__(message, param=param, headers={"Retry-After": str(retry_after_s)})


class NotReady(BerthError):
    """The model is still loading, or is unhealthy."""

    status = 503
    error_type = "overloaded"
    openai_type = "service_unavailable"


class DefaultModelNotReady(NotReady):
    """A health check (SageMaker's /ping, TGI's /health) while the default model is not ready."""

    error_type = "healthcheck"  # TGI's word for it

    def __init__(self) -> None:
        super().__init__("the default model is not ready")


class WeightsNotFound(InvalidRequest):
    """A model source that does not exist or cannot be read; the message names the URI."""


class GenerationFailed(BerthError):
    """The engine failed while generating."""

    status = 500
    error_type = "generation"
    openai_type = "server_error"


class IncompleteGeneration(BerthError):
    """The model process went away mid-request."""

    status = 500
    error_type = "incomplete_generation"
    openai_type = "server_error"


class ModelTimeout(BerthError):
    """The model did not answer within the request budget (BERTH_REQUEST_TIMEOUT), or stopped mid-request."""

    status = 504
    tgi_status = 424  # TGI's status for a failed dependency (the model)
    error_type = "incomplete_generation"
    openai_type = "server_error"


class InsufficientStorage(BerthError):
    """The disk (or a file-size limit) would not take a write Berth needed; nothing was changed."""

    status = 507
    error_type = "generation"
    openai_type = "server_error"


class ClientDisconnected(BerthError):
    """The client hung up before its reply was ready; its generation was aborted (nobody reads the reply)."""

    status = 499
    error_type = "incomplete_generation"
    openai_type = "invalid_request_error"


# How a model-process Failure.error_type becomes an exception on the frontend.
FAILURE_TYPES: dict[str, type[BerthError]] = {
    "validation": InvalidRequest,
    "overloaded": Overloaded,
    "generation": GenerationFailed,
    "not_found": NotFound,
    "incomplete_generation": IncompleteGeneration,
}


# Every error class a record can name, most general first (a subclass with the same type and
# status, such as InputTooLong, comes back as its parent: the same status, type and body).
_RECORDED: tuple[type[BerthError], ...] = (
    InvalidRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, Overloaded, NotReady, GenerationFailed,
    IncompleteGeneration, ModelTimeout, InsufficientStorage, ClientDisconnected,
)


def record_of(error: BerthError) -> ErrorRecord:
    """The record of a typed error, to send to another process."""
    return ErrorRecord(message=error.message, error_type=error.error_type, status=error.status, param=error.param)


def failure_of(request_id: str, error: BerthError) -> Failure:
    """The record of a typed error that ends one request."""
    return Failure(request_id=request_id, message=error.message, error_type=error.error_type,
                   status=error.status, param=error.param)


def from_record(record: ErrorRecord) -> BerthError:
    """Rebuild the typed error another process recorded: by type and status, else by either alone."""
    exact = next((cls for cls in _RECORDED if (cls.error_type, cls.status) == (record.error_type, record.status)),
                 None)
    by_type = FAILURE_TYPES.get(str(record.error_type)) if record.status == 500 else None
    cls = exact or by_type or _BY_STATUS.get(record.status) or FAILURE_TYPES.get(str(record.error_type))
    return (cls or GenerationFailed)(record.message, param=record.param)


def from_failure(error_type: str, message: str, param: str | None = None) -> BerthError:
    """Rebuild a typed error known only by its type (a model's load failure in its status)."""
    return from_record(ErrorRecord(message=message, error_type=error_type, param=param))


_BY_STATUS: dict[int, type[BerthError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: Overloaded,
    503: NotReady,
    504: ModelTimeout,
    507: InsufficientStorage,
}
