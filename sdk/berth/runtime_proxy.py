"""SageMaker's runtime API served locally: InvokeEndpoint(+WithResponseStream) proxied to a Berth /invocations."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from berth.eventstream import model_stream_error, payload_part

_ROUTE = re.compile(r"^/endpoints/(?P<name>[^/]+)/(?P<action>invocations|invocations-response-stream)$")
# Request headers SageMaker forwards to the container.
_FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes", "X-Amzn-SageMaker-Inference-Id",
              "X-Amzn-SageMaker-Session-Id")
# Reply headers SageMaker passes back to the caller (boto3: CustomAttributes, NewSessionId, ClosedSessionId).
_RETURNED = ("X-Amzn-SageMaker-Custom-Attributes", "X-Amzn-SageMaker-New-Session-Id",
             "X-Amzn-SageMaker-Closed-Session-Id")
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit


class _Handler(BaseHTTPRequestHandler):
    """One request: check the route and endpoint name, forward, translate the reply."""

    protocol_version = "HTTP/1.1"  # chunked streaming and keep-alive, as boto3 expects
    server: RuntimeServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; the Berth server keeps the useful logs."""

    def do_POST(self) -> None:
        """Route POST /endpoints/{name}/invocations[-response-stream]."""
        from urllib.parse import unquote

        match = _ROUTE.match(self.path.split("?", 1)[0])
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if match is None:
            return self._error(404, "UnknownOperationException", f"no such operation: POST {self.path}")
        name = unquote(match["name"])
        if name != self.server.endpoint_name:
            return self._error(400, "ValidationError", f"Endpoint {name} of account local not found.")
        if length > MAX_BODY_BYTES:
            return self._error(413, "ValidationError", "Request payload is larger than 6 MB")
        headers = {h: self.headers[h] for h in _FORWARDED if self.headers.get(h)}
        headers.setdefault("Content-Type", "application/json")
        component = self.headers.get("X-Amzn-SageMaker-Inference-Component")
        if component:  # locally an inference component is an adapter: SageMaker sends its name this way
            headers["X-Amzn-SageMaker-Adapter-Identifier"] = component
        if match["action"] == "invocations":
            self._invoke(body, headers)
        else:
            self._invoke_stream(body, headers)

    def _invoke(self, body: bytes, headers: dict[str, str]) -> None:
        """Forward and return the whole reply; container errors become ModelError (424)."""
        try:
            reply = self.server.client.post("/invocations", content=body, headers=headers)
        except httpx.HTTPError as exc:
            return self._error(503, "ServiceUnavailable", f"the model server is unreachable: {exc}")
        if reply.status_code >= 400:
            return self._model_error(reply.status_code, reply.text)
        returned = {h: reply.headers[h] for h in _RETURNED if reply.headers.get(h)}
        self._send(200, reply.content, {
            "Content-Type": reply.headers.get("Content-Type", "application/json"),
            "x-Amzn-Invoked-Production-Variant": "AllTraffic", **returned})

    def _invoke_stream(self, body: bytes, headers: dict[str, str]) -> None:
        """Forward and re-frame each chunk of the container's reply as a PayloadPart event."""
        try:
            with self.server.client.stream("POST", "/invocations", content=body, headers=headers) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    return self._model_error(reply.status_code, reply.text)
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.amazon.eventstream")
                self.send_header("X-Amzn-SageMaker-Content-Type",
                                 reply.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("x-Amzn-Invoked-Production-Variant", "AllTraffic")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in reply.iter_raw():
                        if chunk:
                            self._chunk(payload_part(chunk))
                except httpx.HTTPError as exc:
                    self._chunk(model_stream_error(f"the model server stream broke: {exc}"))
                except (BrokenPipeError, ConnectionResetError):
                    # The caller went away: leaving the `with` closes the upstream stream, which
                    # makes Berth abort the generation.
                    self.close_connection = True
                    return
                self._chunk(b"")
        except httpx.HTTPError as exc:
            return self._error(503, "ServiceUnavailable", f"the model server is unreachable: {exc}")

    def _chunk(self, data: bytes) -> None:
        """Write one HTTP/1.1 chunk (empty: the terminating chunk)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _model_error(self, status: int, text: str) -> None:
        """SageMaker's ModelError: the container answered with an error status."""
        kind = "client" if status < 500 else "server"
        message = f"Received {kind} error ({status}) from primary with message \"{text.strip()[:2000]}\"."
        self._error(424, "ModelError", message, OriginalStatusCode=status, OriginalMessage=text[:2000],
                    LogStreamArn="local")

    def _error(self, status: int, code: str, message: str, **extra: Any) -> None:
        """An AWS rest-json error: x-amzn-ErrorType header plus {"message", ...} body."""
        body = json.dumps({"message": message, **extra}).encode()
        self._send(status, body, {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """Write a complete reply."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RuntimeServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows one endpoint name and the Berth URL behind it."""

    daemon_threads = True

    def __init__(self, endpoint_name: str, upstream_url: str, host: str = "127.0.0.1", port: int = 0,
                 timeout_s: float = 300.0) -> None:
        """Bind now (port 0: any free port); serve() starts the thread."""
        super().__init__((host, port), _Handler)
        self.endpoint_name = endpoint_name
        self.client = httpx.Client(base_url=upstream_url, timeout=timeout_s)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint_url to give boto3's sagemaker-runtime client."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}" if isinstance(host, str) else f"http://{host.decode()}:{port}"

    def serve(self) -> RuntimeServer:
        """Serve in a daemon thread; return self."""
        self._thread = threading.Thread(target=self.serve_forever, name="berth-runtime", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the upstream client."""
        self.shutdown()
        self.server_close()
        self.client.close()
