"""What the audio and image protocols share: finding a model with an ability, and refusals before a reply starts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from berth_server.errors import InvalidRequest


def media_model(state: Any, name: str | None, ability: str, what: str) -> tuple[str, Any]:
    """(uid, description) of the model a request names, which must have `ability`; else a 400 naming it."""
    uid = state.gateway.resolve_model(name)
    description = state.gateway.describe(uid)
    if ability not in description.abilities:
        kind = description.model_type
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise InvalidRequest(f"model '{uid}' cannot {what}: it is {article} {kind} model "
                             f"({', '.join(description.abilities) or 'no abilities'}); launch one with {ability}",
                             param="model")
    return uid, description


def primed(events: Iterator[Any]) -> Iterator[Any]:
    """The events with the first one already received, so a refusal raises here, before any reply starts."""
    first = next(events)
    return itertools.chain([first], events)
