"""GET /v1/responses/{id}/input_items: OpenAI's cursor page (limit, order, after) over a stored response's items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth_server.errors import InvalidRequest

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer, not {raw!r}", param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", param="limit")
    return limit


def input_items_page(items: list[dict[str, Any]], args: Mapping[str, str]) -> dict[str, Any]:
    """One page of items: newest first unless order=asc, starting after the item id `after`."""
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', not {order!r}", param="order")
    limit = _limit(args.get("limit"))
    ordered = items if order == "asc" else items[::-1]
    after = args.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"after: no input item has id {after!r}", param="after")
        ordered = ordered[ids.index(after) + 1:]
    page = ordered[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit}
