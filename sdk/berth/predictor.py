"""Predictors: one object per deployment with predict, predict_stream and delete, whatever the target."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from typing_extensions import Self

from berth.errors import BerthError, InvokeError
from berth.streaming import iter_events

Body = dict[str, Any] | str | bytes
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"  # what SageMaker sends the container for an adapter
ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"  # route=... reaches another Berth route
SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION_HEADER = "X-Amzn-SageMaker-New-Session-Id"  # "<id>; Expires=<YYYY-MM-DDTHH:MM:SSZ>"
CLOSED_SESSION_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION_BODY = b'{"requestType": "NEW_SESSION"}'
CLOSE_SESSION_BODY = b'{"requestType": "CLOSE"}'


def session_id_of(header: str | None) -> str:
    """The id in a New-Session-Id header ("<id>; Expires=..."); BerthError when there is none."""
    session = (header or "").split(";", 1)[0].strip()
    if not session:
        raise BerthError("the endpoint did not open a session (are stateful sessions enabled on it?)")
    return session


def route_attributes(route: str | None) -> str | None:
    """The custom attributes that send an invocation to another route ("route=/v1/embeddings")."""
    if route is None:
        return None
    if not route.startswith("/") or "," in route or ";" in route:
        raise BerthError(f"route must be a path such as /v1/embeddings, not {route!r}")
    return f"route={route}"


def _checked(reply: httpx.Response) -> httpx.Response:
    """The reply, or InvokeError with its status and text."""
    if reply.status_code >= 400:
        raise InvokeError(f"HTTP {reply.status_code}: {reply.text.strip()[:500]}", reply.status_code)
    return reply


def encode_body(body: Body) -> bytes:
    """JSON-encode a dict; pass str/bytes through (already JSON)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def streaming_body(body: Body) -> bytes:
    """The same body with "stream": true, which every Berth route honours for SSE output."""
    data = json.loads(body) if isinstance(body, (str, bytes)) else dict(body)
    data.setdefault("stream", True)
    return json.dumps(data).encode("utf-8")


class Predictor:
    """What every deploy target returns; subclasses say how bytes travel."""

    endpoint_name: str

    def predict(self, body: Body, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> Any:
        """Send one request to /invocations and return the parsed JSON reply.

        Args:
            body: the request body (any shape /invocations takes, or the route's own).
            adapter: a LoRA adapter, by name.
            route: another Berth route to serve it ("/v1/embeddings"), through SageMaker's custom attributes.
            session: a stateful session's id (from new_session()).
        """
        raise NotImplementedError

    def new_session(self) -> str:
        """Open a stateful session on the endpoint; its id."""
        raise BerthError(f"{type(self).__name__} cannot open sessions")

    def close_session(self, session: str) -> str:
        """Close a stateful session (its cached prefix is freed); the id the endpoint closed."""
        raise BerthError(f"{type(self).__name__} cannot close sessions")

    def add_adapter(self, name: str, src: str) -> None:
        """Attach a LoRA adapter (SageMaker's adapter contract)."""
        raise BerthError(f"{type(self).__name__} cannot attach adapters")

    def remove_adapter(self, name: str) -> None:
        """Detach a LoRA adapter."""
        raise BerthError(f"{type(self).__name__} cannot detach adapters")

    def list_adapters(self) -> list[Any]:
        """The attached adapters."""
        raise BerthError(f"{type(self).__name__} cannot list adapters")

    def stream_bytes(self, body: Body) -> Iterator[bytes]:
        """Send a streaming request and yield the raw response bytes as they arrive."""
        raise NotImplementedError

    def predict_stream(self, body: Body) -> Iterator[Any]:
        """Yield parsed stream events (OpenAI chunks or TGI token events); [DONE] is skipped."""
        return iter_events(self.stream_bytes(streaming_body(body)))

    def delete(self) -> None:
        """Tear the deployment down."""
        raise NotImplementedError

    def sagemaker_predictor(self) -> Any:
        """The official SageMaker SDK v2 Predictor for this endpoint (needs `pip install berth[sagemaker]`)."""
        raise BerthError(f"{type(self).__name__} has no SageMaker endpoint")

    def __enter__(self) -> Self:
        """Use as a context manager: delete on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Delete the deployment."""
        self.delete()


class HttpPredictor(Predictor):
    """Talks to a Berth container over HTTP (the docker and local targets)."""

    def __init__(self, base_url: str, endpoint_name: str, timeout_s: float = 300.0,
                 on_delete: Callable[[], None] | None = None) -> None:
        """Remember the server URL; `on_delete` stops whatever runs it."""
        self.base_url = base_url.rstrip("/")
        self.endpoint_name = endpoint_name
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._on_delete = on_delete

    def predict(self, body: Body, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> Any:
        """POST /invocations with the headers SageMaker would send and return the JSON reply; InvokeError on a non-2xx."""
        return _checked(self._invoke(encode_body(body), adapter=adapter, route=route, session=session)).json()

    def new_session(self) -> str:
        """POST {"requestType": "NEW_SESSION"}; the id from X-Amzn-SageMaker-New-Session-Id."""
        return session_id_of(_checked(self._invoke(NEW_SESSION_BODY, session="NEW_SESSION")).headers.get(
            NEW_SESSION_HEADER))

    def close_session(self, session: str) -> str:
        """POST {"requestType": "CLOSE"} with the session's header; the id the endpoint closed."""
        reply = _checked(self._invoke(CLOSE_SESSION_BODY, session=session))
        return reply.headers.get(CLOSED_SESSION_HEADER, "")

    def _invoke(self, content: bytes, *, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if adapter:
            headers[ADAPTER_HEADER] = adapter
        attributes = route_attributes(route)
        if attributes:
            headers[ATTRIBUTES_HEADER] = attributes
        if session:
            headers[SESSION_HEADER] = session
        return self._client.post("/invocations", content=content, headers=headers)

    def add_adapter(self, name: str, src: str, pin: bool = False) -> None:
        """POST /adapters {name, src, preload, pin}."""
        _checked(self._client.post("/adapters", json={"name": name, "src": src, "preload": True, "pin": pin}))

    def remove_adapter(self, name: str) -> None:
        """DELETE /adapters/{name}."""
        _checked(self._client.delete(f"/adapters/{name}"))

    def list_adapters(self) -> list[Any]:
        """GET /adapters."""
        return list(_checked(self._client.get("/adapters")).json())

    def stream_bytes(self, body: Body) -> Iterator[bytes]:
        """POST /invocations with stream and yield raw chunks."""
        with self._client.stream("POST", "/invocations", content=encode_body(body),
                                 headers={"Content-Type": "application/json",
                                          "Accept": "text/event-stream"}) as reply:
            if reply.status_code >= 400:
                reply.read()
                raise InvokeError(f"HTTP {reply.status_code}: {reply.text.strip()[:500]}", reply.status_code)
            yield from reply.iter_raw()

    def delete(self) -> None:
        """Close the client and stop the server."""
        self._client.close()
        if self._on_delete is not None:
            on_delete, self._on_delete = self._on_delete, None
            on_delete()


class RuntimePredictor(Predictor):
    """Talks to a SageMaker endpoint through boto3's sagemaker-runtime client (real or local)."""

    def __init__(self, endpoint_name: str, runtime_client: Any,
                 on_delete: Callable[[], None] | None = None) -> None:
        """Keep the runtime client; `on_delete` removes the endpoint."""
        self.endpoint_name = endpoint_name
        self.runtime = runtime_client
        self._on_delete = on_delete

    def predict(self, body: Body, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> Any:
        """InvokeEndpoint and parse the JSON body; an adapter is named as its inference component."""
        return json.loads(self._invoke(encode_body(body), adapter=adapter, route=route, session=session)["Body"].read())

    def new_session(self) -> str:
        """InvokeEndpoint with SessionId="NEW_SESSION"; the id from its NewSessionId."""
        return session_id_of(self._invoke(NEW_SESSION_BODY, session="NEW_SESSION").get("NewSessionId"))

    def close_session(self, session: str) -> str:
        """InvokeEndpoint with the session's id and a CLOSE body; its ClosedSessionId."""
        return str(self._invoke(CLOSE_SESSION_BODY, session=session).get("ClosedSessionId") or "")

    def _invoke(self, content: bytes, *, adapter: str | None = None, route: str | None = None,
                session: str | None = None) -> Any:
        extra: dict[str, str] = {}
        if adapter:
            extra["InferenceComponentName"] = adapter
        attributes = route_attributes(route)
        if attributes:
            extra["CustomAttributes"] = attributes
        if session:
            extra["SessionId"] = session
        return self.runtime.invoke_endpoint(EndpointName=self.endpoint_name, Body=content,
                                            ContentType="application/json", Accept="application/json", **extra)

    def stream_bytes(self, body: Body) -> Iterator[bytes]:
        """InvokeEndpointWithResponseStream and yield each PayloadPart's bytes."""
        reply = self.runtime.invoke_endpoint_with_response_stream(
            EndpointName=self.endpoint_name, Body=encode_body(body), ContentType="application/json")
        for event in reply["Body"]:
            part = event.get("PayloadPart")
            if part is not None:
                yield part["Bytes"]

    def delete(self) -> None:
        """Remove the endpoint (and what the deploy created for it)."""
        if self._on_delete is not None:
            on_delete, self._on_delete = self._on_delete, None
            on_delete()

    def sagemaker_predictor(self) -> Any:
        """Build sagemaker.predictor.Predictor on a session that uses this runtime client."""
        try:
            import boto3
            from sagemaker.deserializers import JSONDeserializer
            from sagemaker.predictor import Predictor as SageMakerPredictor
            from sagemaker.serializers import JSONSerializer
            from sagemaker.session import Session
        except ImportError as exc:
            raise BerthError("the SageMaker SDK is not installed: pip install 'berth[sagemaker]'") from exc
        region = self.runtime.meta.region_name
        session = Session(boto_session=boto3.Session(region_name=region), sagemaker_runtime_client=self.runtime)
        return SageMakerPredictor(self.endpoint_name, sagemaker_session=session,
                                  serializer=JSONSerializer(), deserializer=JSONDeserializer())
