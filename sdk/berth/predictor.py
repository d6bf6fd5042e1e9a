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

    def predict(self, body: Body, adapter: str | None = None) -> Any:
        """Send one request to /invocations (with a LoRA adapter, by name) and return the parsed JSON reply."""
        raise NotImplementedError

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

    def predict(self, body: Body, adapter: str | None = None) -> Any:
        """POST /invocations and return the JSON reply; raise InvokeError on a non-2xx."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if adapter:
            headers[ADAPTER_HEADER] = adapter
        reply = self._client.post("/invocations", content=encode_body(body), headers=headers)
        return _checked(reply).json()

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

    def predict(self, body: Body, adapter: str | None = None) -> Any:
        """InvokeEndpoint and parse the JSON body; an adapter is named as its inference component."""
        extra = {"InferenceComponentName": adapter} if adapter else {}
        reply = self.runtime.invoke_endpoint(EndpointName=self.endpoint_name, Body=encode_body(body),
                                             ContentType="application/json", Accept="application/json", **extra)
        return json.loads(reply["Body"].read())

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
