"""Turn a byte stream (SSE or TGI token events, cut anywhere) into parsed JSON events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

DONE = "[DONE]"


class StreamError(RuntimeError):
    """The server sent an error event in the middle of a stream."""


class LineBuffer:
    """Reassemble lines from chunks whose boundaries fall anywhere, even inside a UTF-8 character."""

    def __init__(self) -> None:
        """Start empty."""
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        """Add a chunk; return the complete lines it finished (without line endings)."""
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        return [line.rstrip(b"\r").decode("utf-8") for line in complete]

    def flush(self) -> list[str]:
        """Return the last line if the stream ended without a newline."""
        rest, self._pending = self._pending, b""
        return [rest.rstrip(b"\r").decode("utf-8")] if rest.strip() else []


def parse_line(line: str) -> Any | None:
    """Parse one SSE line: `data: {json}` -> the object; comments, blanks, other fields, [DONE] -> None."""
    stripped = line.strip()
    if not stripped or stripped.startswith(":"):
        return None
    if stripped.startswith("data:"):
        stripped = stripped[len("data:"):].strip()
    elif stripped.startswith(("event:", "id:", "retry:")):
        return None
    if not stripped or stripped == DONE:
        return None
    return json.loads(stripped)


def iter_events(chunks: Iterable[bytes]) -> Iterator[Any]:
    """Yield parsed events from raw chunks; raise StreamError on an in-stream error event."""
    buffer = LineBuffer()
    for chunk in chunks:
        for line in buffer.feed(chunk):
            yield from _checked(line)
    for line in buffer.flush():
        yield from _checked(line)


def _checked(line: str) -> Iterator[Any]:
    """Parse a line and raise if it is an error event (the openai and TGI clients do the same)."""
    event = parse_line(line)
    if event is None:
        return
    if isinstance(event, dict) and event.get("error"):
        error = event["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise StreamError(str(message))
    yield event
