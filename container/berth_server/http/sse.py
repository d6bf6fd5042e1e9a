"""Streamed replies: SSE (plain or with named events) and NDJSON framing, disconnect detection, errors as a final event.

FINDINGS: headers only leave with the first body chunk, so an SSE comment goes first (NDJSON has
no comments: its first line pushes them); a client that disconnects is noticed by a watcher
greenlet peeking the raw socket for EOF, so its generation is aborted promptly instead of at the
next token.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from flask import Response, request

from berth_server.errors import BerthError, GenerationFailed
from berth_server.http.errors import shape_for_request, stream_error_event
from berth_server.protocols.error_shape import ErrorShape
from berth_server.protocols.reply import Framing

log = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
SSE_OPEN = ": berth\n\n"  # an SSE comment: every client ignores it, and it pushes the headers out
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def sse_event(data: Any) -> str:
    """Frame one event: a dict/list is JSON-encoded, a str is sent as is."""
    return f"data: {_json(data)}\n\n"


def named_sse_event(data: Any) -> str:
    """Frame one event with an `event:` line named by its "type" (OpenAI Responses, Anthropic Messages)."""
    name = data.get("type") if isinstance(data, dict) else None
    return f"event: {name}\ndata: {_json(data)}\n\n" if name else sse_event(data)


def ndjson_line(data: Any) -> str:
    """One NDJSON line (Ollama)."""
    return _json(data) + "\n"


# framing name -> (frame one event, mimetype, what goes first to push the headers out)
FRAMINGS: dict[Framing, tuple[Callable[[Any], str], str, str]] = {
    "sse": (sse_event, "text/event-stream", SSE_OPEN),
    "sse_named": (named_sse_event, "text/event-stream", SSE_OPEN),
    "ndjson": (ndjson_line, "application/x-ndjson", ""),
}


def _watch_disconnect(sock: socket.socket, on_disconnect: Callable[[], None]) -> None:
    """Block until the client closes its side, then call on_disconnect."""
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        data = b""
    if data == b"":
        on_disconnect()
    # Data (a pipelined request) means we cannot tell: stop watching.


def start_disconnect_watcher(environ: dict[str, Any], on_disconnect: Callable[[], None]) -> gevent.Greenlet | None:
    """Spawn the EOF watcher on gunicorn's socket; None when not under gunicorn (tests)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    return gevent.spawn(_watch_disconnect, sock, on_disconnect)


def sse_response(events: Iterable[str], *, on_close: Callable[[], None] | None = None,
                 shape: ErrorShape | None = None, done: bool = False, status: int = 200,
                 framing: Framing = "sse") -> Response:
    """Stream already-framed events; errors become a final event; on_close runs in finally.

    Args:
        events: framed events (FRAMINGS[framing]'s framer); may raise BerthError mid-stream.
        on_close: cleanup (stream.close) — runs when the stream ends, fails or the client leaves.
        shape: the wire's error shape; defaults to the current request's.
        done: append `data: [DONE]` after the events (OpenAI).
        framing: "sse", "sse_named" or "ndjson" (the error event is framed the same way).
    """
    shape = shape or shape_for_request()
    frame, mimetype, opening = FRAMINGS[framing]
    environ = request.environ

    def generate() -> Iterator[str]:
        watcher = start_disconnect_watcher(environ, on_close) if on_close is not None else None
        iterator = iter(events)
        try:
            if opening:
                yield opening
            yield from iterator
            if done:
                yield SSE_DONE
        except BerthError as error:
            log.warning("stream on %s failed: %s", environ.get("PATH_INFO"), error.message)
            yield frame(stream_error_event(error, shape))
        except Exception as exc:
            log.exception("stream on %s failed", environ.get("PATH_INFO"))
            yield frame(stream_error_event(GenerationFailed(f"internal error: {type(exc).__name__}"), shape))
        finally:
            if watcher is not None:
                watcher.kill(block=True)  # blocking: a dangling watcher breaks keep-alive (FINDINGS)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            if on_close is not None:
                on_close()

    return Response(generate(), status=status, mimetype=mimetype, headers=SSE_HEADERS)
