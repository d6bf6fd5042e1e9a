"""The fold of a Responses event stream: the whole response is the object its terminal event carries.

Responses events are typed: a client rebuilds the response from output_item / content_part / delta
events, and the stream ends with response.completed, response.incomplete or response.failed carrying
the whole response object. The service writes that object once, from the same items it streamed
(same ids, same text), so the whole (non-streamed) reply is that object: streamed and whole replies
cannot disagree. A failed response is an error reply when not streamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from berth_server.errors import BerthError, GenerationFailed, IncompleteGeneration
from berth_server.protocols.reply import WireEvent

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# The whole-only key of a response.failed event that holds the typed error (protocols/reply.py: "_" keys
# never go on the wire), so a whole reply fails with the status the error carries.
ERROR_KEY = "_error"


def fold_response(events: Iterable[WireEvent]) -> WireEvent:
    """The response object of the terminal event; its error when the response failed."""
    final: WireEvent | None = None
    for event in events:
        if event.get("type") in TERMINAL:
            final = event
    if final is None:
        raise IncompleteGeneration("the response ended without response.completed, .incomplete or .failed")
    if final["type"] == "response.failed":
        error = final.get(ERROR_KEY)
        if isinstance(error, BerthError):
            raise error
        raise GenerationFailed(str((final["response"].get("error") or {}).get("message") or "the response failed"))
    response: dict[str, Any] = final["response"]
    return response


def whole_response(parts: list[WireEvent]) -> WireEvent:
    """The body of a whole reply: the folded response itself."""
    return parts[0]
