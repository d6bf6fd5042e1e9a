"""TGI's x-* response headers, from figures Berth measures (a figure it cannot know is left out).

TGI sends on a whole reply: x-compute-type, x-compute-time (seconds), x-compute-characters,
x-total-time, x-validation-time, x-queue-time, x-inference-time, x-time-per-token (milliseconds),
x-prompt-tokens and x-generated-tokens; on a stream only those known before the first byte
(x-compute-type, x-compute-characters).

Here validation is the time until the model process accepted the request (parsed, templated,
tokenized, checked against the limits and admitted by the engine); inference runs from that to the
last token. Berth cannot tell a request's wait in the engine's queue from its prefill, so
x-queue-time is not sent (it is part of x-inference-time).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TgiTimings:
    """When a TGI request started and was accepted; the headers follow from them and the folded reply."""

    compute_type: str | None
    characters: int
    started: float = field(default_factory=time.monotonic)
    accepted: float | None = None

    def mark_accepted(self) -> None:
        """The model process accepted every prompt of the request."""
        self.accepted = time.monotonic()

    def stream_headers(self) -> dict[str, str]:
        """What TGI sends before the first byte."""
        headers = {"x-compute-characters": str(self.characters)}
        if self.compute_type:
            headers["x-compute-type"] = self.compute_type
        return headers

    def whole_headers(self, folded: list[dict[str, Any]]) -> Mapping[str, str]:
        """The headers of a whole reply, at its end: timings, and token counts from each part's details."""
        ended = time.monotonic()
        details = [part.get("details") or {} for part in folded]
        prompt = sum(int(d.get("input_length") or 0) for d in details)
        generated = sum(int(d.get("generated_tokens") or 0) for d in details)
        total = ended - self.started
        headers = {**self.stream_headers(), "x-compute-time": f"{total:.6f}", "x-total-time": _ms(total),
                   "x-prompt-tokens": str(prompt), "x-generated-tokens": str(generated)}
        if self.accepted is not None:
            inference = ended - self.accepted
            headers["x-validation-time"] = _ms(self.accepted - self.started)
            headers["x-inference-time"] = _ms(inference)
            if generated:
                headers["x-time-per-token"] = _ms(inference / generated)
        return headers


def _ms(seconds: float) -> str:
    """Whole milliseconds, as TGI writes them."""
    return str(int(seconds * 1000))
