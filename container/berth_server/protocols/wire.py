"""What every protocol's schemas share: turning a JSON body into a wire model, or an InvalidRequest naming the field."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from berth_server.errors import InvalidRequest

WireModel = TypeVar("WireModel", bound=pydantic.BaseModel)


def parse(model: type[WireModel], body: Any) -> WireModel:
    """Validate a JSON body into `model`; the first problem becomes InvalidRequest (400 on /v1, 422 on TGI)."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}" if where else message, param=where) from None
