"""The HTTP side of a WireReply: its events framed (SSE, named SSE or NDJSON), or folded into one JSON body.

Views return protocols.reply.WireReply; the app's make_response (http/app.py) sends it here.
A whole reply is folded while a watcher peeks the client's socket: a client that hangs up aborts
its generations at once (FINDINGS), and the fold ends with ClientDisconnected.
"""

from __future__ import annotations

from flask import Response, jsonify, request

from berth_server.errors import ClientDisconnected
from berth_server.http.sse import FRAMINGS, sse_response, start_disconnect_watcher
from berth_server.protocols.reply import WireReply, streamed


def render(reply: WireReply) -> Response:
    """The Flask response for a protocol's reply."""
    if reply.stream:
        frame = FRAMINGS[reply.framing][0]
        chunks = ("".join(frame(streamed(event)) for event in (item if isinstance(item, list) else [item]))
                  for item in reply.parts[0])
        response = sse_response(chunks, on_close=reply.on_close, done=reply.done, framing=reply.framing)
        response.headers.update(reply.headers)
        return response
    folded = _fold_watching(reply)
    response = jsonify(reply.whole(folded))
    response.headers.update(reply.headers)
    if reply.whole_headers is not None:
        response.headers.update(reply.whole_headers(folded))
    return response


def _fold_watching(reply: WireReply) -> list[dict]:  # type: ignore[type-arg]
    client_gone = False

    def client_left() -> None:
        nonlocal client_gone
        client_gone = True
        if reply.on_close is not None:
            reply.on_close()

    watcher = start_disconnect_watcher(request.environ, client_left)
    try:
        folded = [reply.fold_part(part) for part in reply.parts]
        if client_gone:
            raise ClientDisconnected("the client disconnected; its generation was aborted")
        return folded
    finally:
        if watcher is not None:
            watcher.kill(block=True)  # blocking: a dangling watcher breaks keep-alive (FINDINGS)
        if reply.on_close is not None:
            reply.on_close()
