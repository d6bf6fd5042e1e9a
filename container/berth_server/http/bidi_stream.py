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

Live audio: a text frame {"id": ID, "audio": "start", "model", "sample_rate" (16000), "language",
"prompt"} opens a live transcription on an audio2text model; the binary frames that follow carry its
16-bit mono PCM, and transcript.text.delta events come back as segments become final
(protocols/audio/live.py); {"id": ID, "audio": "end"} sends the rest, transcript.text.done and the last
frame. A binary frame with no live transcription open closes the connection with 1003 (unsupported data).

Several requests may run at once on one connection; ping frames are answered (by the WebSocket
library); a frame that is not a JSON object gets an error frame, and the connection stays open. When
the client goes away, every generation it started is aborted.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import gevent
import gevent.lock
import gevent.queue
from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from werkzeug.routing import WebsocketMismatch
from werkzeug.test import EnvironBuilder

from berth_server.client.state import get_state
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest
from berth_server.http.errors import error_response, shape_for_request, stream_error_event
from berth_server.protocols.audio.live import LiveTranscript
from berth_server.protocols.reply import WireReply, streamed

log = logging.getLogger(__name__)

PATH = "/invocations-bidirectional-stream"
INVOCATIONS = "/invocations"
UNSUPPORTED_DATA = 1003  # RFC 6455: a binary frame while no live transcription is open
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
        self._audio: gevent.queue.Queue[bytes | None] | None = None  # the open live transcription's input

    def serve(self) -> None:
        """Until the client closes: spawn a request per text frame; abort them all when it goes away."""
        running: set[gevent.Greenlet] = set()
        try:
            while True:
                frame = self.ws.receive()
                if isinstance(frame, (bytes, bytearray)):
                    if self._audio is None:
                        self.ws.close(UNSUPPORTED_DATA, 'binary frames carry live audio: send {"audio": "start"} '
                                                        "first, or JSON text frames")
                        return
                    self._audio.put(bytes(frame))
                    continue
                if frame is None:
                    continue
                control = _audio_control(frame)
                # Audio control frames are taken in order with the binary frames around them.
                worker = gevent.spawn(self._run, frame) if control is None else self._audio_control(*control)
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

    def _audio_control(self, request_id: Any, body: dict[str, Any]) -> gevent.Greenlet:
        """{"audio": "start", ...} opens a live transcription (its binary frames follow); "end" closes it."""
        if request_id is None:
            request_id = next(self._numbers)
        if body["audio"] == "end":
            if self._audio is None:
                return gevent.spawn(self._refuse, request_id, 'no live transcription is open: send {"audio": "start"}')
            self._audio.put(None)
            self._audio = None
            return gevent.spawn(lambda: None)
        if self._audio is not None:
            return gevent.spawn(self._refuse, request_id, 'a live transcription is open: send {"audio": "end"} first')
        audio: gevent.queue.Queue[bytes | None] = gevent.queue.Queue()
        self._audio = audio
        return gevent.spawn(self._live_audio, request_id, body, audio)

    def _live_audio(self, request_id: Any, body: dict[str, Any], audio: gevent.queue.Queue[bytes | None]) -> None:
        """Open the live transcription (auth and the model's ability checked as on HTTP), then run it."""
        environ = EnvironBuilder(path=INVOCATIONS, method="POST", headers=self.headers).get_environ()
        with self.app.request_context(environ):
            try:
                refused = self.app.preprocess_request()  # auth: as on HTTP
                if refused is not None:
                    response = self.app.make_response(refused)
                    self._end_audio(audio)
                    return self._send({"id": request_id, "done": True, "status": response.status_code,
                                       "error": response.get_json(silent=True)})
                live = LiveTranscript(get_state(), body.get("model"), int(body.get("sample_rate") or 16000),
                                      body.get("language"), body.get("prompt"))
            except Exception as exc:  # noqa: BLE001 - rendered in /invocations' shape and status
                self._end_audio(audio)
                return self._send_error(request_id, exc)
        self._transcribe(request_id, live, audio)

    def _end_audio(self, audio: gevent.queue.Queue[bytes | None]) -> None:
        """Stop taking binary frames for a live transcription that failed."""
        if self._audio is audio:
            self._audio = None

    def _transcribe(self, request_id: Any, live: LiveTranscript, audio: gevent.queue.Queue[bytes | None]) -> None:
        """Feed the live transcription its frames in order; send its events, then the last frame."""
        try:
            while (pcm := audio.get()) is not None:
                for event in live.feed(pcm):
                    self._send({"id": request_id, "event": event})
            for event in live.finish():
                self._send({"id": request_id, "event": event})
        except Exception as exc:  # noqa: BLE001 - a limit or a model failure ends this transcription only
            self._end_audio(audio)
            return self._send_error(request_id, exc)
        self._send({"id": request_id, "done": True, "status": 200})

    def _send_error(self, request_id: Any, exc: Exception) -> None:
        """The last frame of a request that failed: its status and error body as /invocations renders them."""
        with self.app.test_request_context(INVOCATIONS, method="POST"):
            response: Response = self.app.make_response(self.app.handle_user_exception(exc))
            self._send({"id": request_id, "done": True, "status": response.status_code,
                        "error": response.get_json(silent=True)})

    def _refuse(self, request_id: Any, message: str) -> None:
        """A frame that is not a request: an error frame in /invocations' shape; the connection stays open."""
        self._send_error(request_id, InvalidRequest(message))

    def _send(self, frame: dict[str, Any]) -> None:
        """One text frame (sends from the connection's requests never interleave)."""
        with self._send_lock:
            self.ws.send(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))


def _audio_control(frame: str) -> tuple[Any, dict[str, Any]] | None:
    """(id or None, body) of a live transcription's control frame ({"audio": "start"|"end"}); None for any other."""
    if '"audio"' not in frame:
        return None
    try:
        body = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("audio") not in ("start", "end"):
        return None
    request_id = body.pop("id", None)
    return (None if isinstance(request_id, (dict, list)) else request_id), body
