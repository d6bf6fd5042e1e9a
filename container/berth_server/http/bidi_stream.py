"""SageMaker's bidirectional stream: a WebSocket at /invocations-bidirectional-stream on the serving port.

Each text frame from the client is one request, in any body shape /invocations takes (chat, prompt,
TGI, session requests, and other routes through the upgrade request's custom attributes); the frame
may carry its own "id" (any JSON scalar, taken out of the body), else the server numbers the frames
1, 2, ... Every request runs through the /invocations view itself, with the upgrade request's headers
(the API key, X-Amzn-SageMaker-* headers: a route, an adapter, a session), streamed unless its body
says "stream": false. What comes back, as text frames, each tagged with the request's id:

    {"id": ID, "event": {...}}                  one per event the SSE stream would carry ([DONE] left out)
    {"id": ID, "body": ...}                     a whole (non-streamed) reply
    {"id": ID, "done": true, "status": 200}     the request's last frame
    {"id": ID, "done": true, "status": 4xx/5xx, "error": {...}}   a refusal (the route's error body), or a
                                                failure after its events started (the stream's error event)

Several requests may run at once on one connection; ping frames are answered (by the WebSocket
library); a binary frame (reserved for audio) closes the connection with 1003 (unsupported data); a
frame that is not a JSON object gets an error frame, and the connection stays open. When the client
goes away, every generation it started is aborted.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import gevent
import gevent.lock
from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.routing import WebsocketMismatch
from werkzeug.test import EnvironBuilder

from berth_server.errors import BerthError, GenerationFailed, InvalidRequest
from berth_server.http.errors import error_response, shape_for_request, stream_error_event
from berth_server.protocols.reply import WireReply, streamed

log = logging.getLogger(__name__)

PATH = "/invocations-bidirectional-stream"
INVOCATIONS = "/invocations"
UNSUPPORTED_DATA = 1003  # RFC 6455: a binary frame, which this endpoint does not take (yet: audio)
# Upgrade headers that describe the WebSocket connection itself, not the requests sent over it.
_CONNECTION_HEADERS = ("sec-websocket-", "upgrade", "connection", "content-length", "content-type",
                       "transfer-encoding")


class UpgradeRequired(BerthError):
    """A plain HTTP request to the WebSocket route."""

    status = 426
    error_type = "validation"
    openai_type = "invalid_request_error"


def install_bidi_stream(app: Flask, max_frame_bytes: int) -> None:
    """Add the WebSocket route to `app` (frames up to max_frame_bytes, as a request body may be)."""
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": max_frame_bytes}
    blueprint = Blueprint("bidi_stream", __name__)
    sock = Sock()

    @sock.route(PATH, bp=blueprint)
    def bidirectional_stream(ws: Any) -> None:
        """SageMaker's bidirectional stream (WebSocket): JSON requests in, their events out."""
        headers = [(k, v) for k, v in request.headers.items() if not k.lower().startswith(_CONNECTION_HEADERS)]
        Connection(current_app._get_current_object(), ws, headers).serve()  # type: ignore[attr-defined]

    app.register_blueprint(blueprint)

    @app.errorhandler(WebsocketMismatch)
    def _not_a_websocket(_exc: WebsocketMismatch) -> Response:
        response = error_response(UpgradeRequired(f"{PATH} is a WebSocket: connect with `Upgrade: websocket`"))
        response.headers["Upgrade"] = "websocket"
        return response


class Connection:
    """One client's WebSocket: reads frames, runs each as an /invocations request in its own greenlet."""

    def __init__(self, app: Flask, ws: Any, headers: list[tuple[str, str]]) -> None:
        self.app = app
        self.ws = ws
        self.headers = headers
        self._send_lock = gevent.lock.Semaphore()
        self._numbers = itertools.count(1)

    def serve(self) -> None:
        """Until the client closes: spawn a request per text frame; abort them all when it goes away."""
        running: set[gevent.Greenlet] = set()
        try:
            while True:
                frame = self.ws.receive()
                if isinstance(frame, (bytes, bytearray)):
                    self.ws.close(UNSUPPORTED_DATA, "binary frames are reserved for audio; send JSON text frames")
                    return
                if frame is None:
                    continue
                worker = gevent.spawn(self._run, frame)
                running.add(worker)
                worker.link(running.discard)
        except ConnectionClosed:
            pass
        finally:
            # Killing a request's greenlet closes its reply, whose on_close aborts its generations.
            gevent.killall(list(running), block=True)

    def _run(self, frame: str) -> None:
        """One request: parse the frame, run it through /invocations, send its frames."""
        request_id: Any = next(self._numbers)
        try:
            body = json.loads(frame)
        except ValueError as exc:
            return self._refuse(request_id, f"a frame must be a JSON object: {exc}")
        if not isinstance(body, dict):
            return self._refuse(request_id, "a frame must be a JSON object")
        request_id = body.pop("id", request_id)
        if isinstance(request_id, (dict, list)):
            return self._refuse(None, "a frame's id must be a string or a number")
        body.setdefault("stream", True)
        environ = EnvironBuilder(path=INVOCATIONS, method="POST", headers=self.headers, data=json.dumps(body),
                                 content_type="application/json").get_environ()
        with self.app.request_context(environ):
            try:
                reply = self.app.preprocess_request()  # auth, body limits: as on HTTP
                if reply is None:
                    reply = self.app.dispatch_request()
                self._answer(request_id, reply)
            except Exception as exc:  # noqa: BLE001 - the app's handlers give it the route's status and body
                response = self.app.make_response(self.app.handle_user_exception(exc))
                self._send({"id": request_id, "done": True, "status": response.status_code,
                            "error": response.get_json(silent=True)})

    def _answer(self, request_id: Any, reply: Any) -> None:
        """Send a view's reply: its events one by one when it streams, else its whole body; then the last frame."""
        if not (isinstance(reply, WireReply) and reply.stream):
            response = self.app.make_response(reply)
            body = response.get_json(silent=True) if response.is_json else response.get_data(as_text=True)
            if response.status_code >= 400:
                self._send({"id": request_id, "done": True, "status": response.status_code, "error": body})
                return
            self._send({"id": request_id, "body": body})
            self._send({"id": request_id, "done": True, "status": response.status_code})
            return
        try:
            for item in reply.parts[0]:
                for event in item if isinstance(item, list) else [item]:
                    self._send({"id": request_id, "event": streamed(event)})
        except BerthError as error:
            shape = shape_for_request()
            self._send({"id": request_id, "done": True, "status": shape.status(error),
                        "error": stream_error_event(error, shape)})
            return
        except Exception as exc:  # as an SSE stream does: a final error event
            log.exception("bidirectional stream request %r failed", request_id)
            failed = GenerationFailed(f"internal error: {type(exc).__name__}")
            self._send({"id": request_id, "done": True, "status": 500, "error": stream_error_event(failed)})
            return
        finally:
            if reply.on_close is not None:
                reply.on_close()
        self._send({"id": request_id, "done": True, "status": 200})

    def _refuse(self, request_id: Any, message: str) -> None:
        """A frame that is not a request: an error frame in /invocations' shape; the connection stays open."""
        with self.app.test_request_context(INVOCATIONS, method="POST"):
            response: Response = self.app.make_response(self.app.handle_user_exception(InvalidRequest(message)))
            self._send({"id": request_id, "done": True, "status": response.status_code,
                        "error": response.get_json(silent=True)})

    def _send(self, frame: dict[str, Any]) -> None:
        """One text frame (sends from the connection's requests never interleave)."""
        with self._send_lock:
            self.ws.send(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))
