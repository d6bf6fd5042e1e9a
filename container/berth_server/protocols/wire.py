"""What every protocol's schemas share: turning a JSON body into a wire model, or an InvalidRequest naming the field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import pydantic

from berth_server.errors import InvalidRequest

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
