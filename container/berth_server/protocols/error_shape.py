"""How a wire writes an error: each protocol declares one ErrorShape; http/errors.py only picks and applies it.

A protocol's blueprint names its shape (`blueprint.berth_errors = SHAPE`); a view whose body decides
the wire (SageMaker's /invocations) sets `flask.g.berth_errors` instead. Every body also carries
"detail" (the OpenAPI description promises it), unless the wire's clients choke on extra keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from berth_server.errors import BerthError


def _plain_status(error: BerthError) -> int:
    return error.status


@dataclass(frozen=True)
class ErrorShape:
    """One wire's error conventions.

    Attributes:
        name: the wire's name (logs, tests).
        body: (error, status) -> the JSON body of an error reply.
        stream_event: (error, status) -> the final event a stream that already started ends with.
        status: the HTTP status of an error on this wire (TGI answers validation errors with 422).
    """

    name: str
    body: Callable[[BerthError, int], dict[str, Any]]
    stream_event: Callable[[BerthError, int], dict[str, Any]]
    status: Callable[[BerthError], int] = _plain_status
