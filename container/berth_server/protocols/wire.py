"""What every protocol shares on the way in: the request body as JSON, then a wire model or an InvalidRequest naming the field."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import pydantic
from flask import request

from berth_server.errors import InvalidRequest
from berth_server.protocols.bounds import MAX_JSON_DEPTH, json_problem

WireModel = TypeVar("WireModel", bound=pydantic.BaseModel)
# Union members appear in pydantic's error locations as type tags ("str", "list[int]", "constrained-str");
# they are not fields, so they are left out of the name a client sees.
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|constrained-\w+|[\w-]+\[.*\])$")


def _rank(error: Any) -> tuple[bool, int]:
    """Prefer a value error (out of range, too long) over a type mismatch in another union member, then depth."""
    return (not str(error.get("type", "")).endswith("_type"), len(error.get("loc", ())))


def field_name(loc: tuple[Any, ...]) -> str | None:
    """The dotted field path of a pydantic error location, without union type tags."""
    parts = [str(part) for part in loc if not (isinstance(part, str) and _UNION_TAG.match(part))]
    return ".".join(parts) or None


def parse(model: type[WireModel], body: Any) -> WireModel:
    """Validate a JSON body into `model`; the most telling problem becomes InvalidRequest (400 /v1, 422 TGI)."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        best = max(exc.errors(), key=_rank)
        where = field_name(tuple(best.get("loc", ())))
        message = str(best.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}" if where else message, param=where) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def request_json() -> dict[str, Any]:
    """The request body as a JSON object; malformed, NaN-carrying or too deeply nested JSON is an InvalidRequest."""
    data = request.get_data(cache=True)
    try:
        body = json.loads(data, parse_constant=_no_constant) if data else None
    except RecursionError:
        raise InvalidRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    problem = json_problem(body)
    if problem is not None:
        raise InvalidRequest(problem)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body
