"""Xinference management over the launcher's control RPC, and embeddings/rerank over the gateway."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from berth_server.client.state import FrontendState
from berth_server.errors import InvalidRequest
from berth_server.protocols.xinference.schemas import (
    EmbeddingRequest,
    RegisterBody,
    RerankRequest,
    RerankResult,
)

# Control calls that only touch the registry answer fast; a blocking launch waits for the model.
_LAUNCH_SLACK_S = 30.0
_RESERVED = ("method", "timeout_s")


def cluster_auth(state: FrontendState) -> dict[str, bool]:
    """Whether the server wants an API key (xinference-client asks before anything else)."""
    return {"auth": bool(state.settings.api_key)}


def list_registrations(state: FrontendState, model_type: str, detailed: bool) -> Any:
    """Built-in and custom registrations of one model type."""
    return state.control.call("registrations.list", model_type=model_type, detailed=detailed)


def get_registration(state: FrontendState, model_type: str, name: str) -> Any:
    """One registration in full."""
    return state.control.call("registrations.get", model_type=model_type, name=name)


def register(state: FrontendState, model_type: str, body: RegisterBody) -> Any:
    """Add a custom registration."""
    return state.control.call("registrations.register", model_type=model_type, model=body.model,
                              persist=body.persist)


def unregister(state: FrontendState, model_type: str, name: str) -> Any:
    """Remove a custom registration."""
    return state.control.call("registrations.unregister", model_type=model_type, name=name)


def launch(state: FrontendState, body: dict[str, Any], query_wait_ready: str | None) -> dict[str, Any]:
    """POST /v1/models: blocks until ready unless wait_ready=false (query string or body)."""
    clashing = [key for key in _RESERVED if key in body]
    if clashing:
        raise InvalidRequest(f"unsupported launch key {clashing[0]!r}", param=clashing[0])
    params = dict(body)
    if query_wait_ready is not None:
        params["wait_ready"] = query_wait_ready
    timeout = state.settings.model_load_timeout_s + _LAUNCH_SLACK_S
    return state.control.call("models.launch", timeout_s=timeout, **params)


def describe(state: FrontendState, uid: str) -> Any:
    """GET /v1/models/{uid}."""
    return state.control.call("models.get", uid=uid)


def terminate(state: FrontendState, uid: str) -> dict[str, Any]:
    """DELETE /v1/models/{uid}: the model process exits (the launcher waits for it)."""
    state.control.call("terminate", uid=uid, timeout_s=60.0)
    return {}


def progress(state: FrontendState, uid: str) -> Any:
    """GET /v1/models/{uid}/progress."""
    return state.control.call("models.progress", uid=uid)


def instances(state: FrontendState, model_name: str | None, model_uid: str | None) -> Any:
    """GET /v1/models/instances."""
    return state.control.call("models.instances", model_name=model_name, model_uid=model_uid)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: little-endian float32.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embeddings(state: FrontendState, request: EmbeddingRequest) -> dict[str, Any]:
    """OpenAI's embeddings response, with usage counted by the model process."""
    texts = request.texts()
    uid = state.gateway.resolve_model(request.model)
    result = state.gateway.embed(uid, texts, request.dimensions)
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, request.encoding_format)}
            for i, v in enumerate(result.vectors)]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "model": request.model, "data": data, "usage": usage}


def rerank(state: FrontendState, request: RerankRequest) -> dict[str, Any]:
    """Xinference/Cohere rerank: results sorted by relevance, top_n of them, documents when asked."""
    uid = state.gateway.resolve_model(request.model)
    result = state.gateway.rerank(uid, request.query, request.documents)
    order = sorted(range(len(result.scores)), key=lambda i: result.scores[i], reverse=True)
    if request.top_n is not None:
        order = order[: request.top_n]
    results = [
        RerankResult(index=i, relevance_score=result.scores[i],
                     document={"text": request.documents[i]} if request.return_documents else None).model_dump()
        for i in order
    ]
    tokens = {"input_tokens": result.prompt_tokens, "output_tokens": 0}
    return {"id": f"rerank-{int(time.time() * 1000)}", "results": results,
            "meta": {"api_version": None, "billed_units": None, "tokens": tokens,
                     "warnings": None}}
