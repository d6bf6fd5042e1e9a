"""Xinference routes: cluster auth, registrations, launch/describe/terminate, embeddings and rerank."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue

from berth_server.client.state import get_state
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.route_policy import changes_state
from berth_server.protocols.wire import request_json
from berth_server.protocols.xinference import service
from berth_server.protocols.xinference.errors import XINFERENCE_ERRORS
from berth_server.protocols.xinference.schemas import EmbeddingRequest, RegisterBody, RerankRequest, parse
from berth_server.wire_values import as_bool

xinference_bp = Blueprint("xinference", __name__)
xinference_bp.berth_errors = XINFERENCE_ERRORS  # type: ignore[attr-defined]


def _json(value: Any) -> ResponseReturnValue:
    """JSON reply (lists too)."""
    return jsonify(value)


@xinference_bp.get("/v1/cluster/auth")
def cluster_auth() -> ResponseReturnValue:
    """Whether an API key is required."""
    return _json(service.cluster_auth(get_state()))


@xinference_bp.get("/v1/model_registrations/<model_type>")
def list_registrations(model_type: str) -> ResponseReturnValue:
    """Registrations of one type (?detailed=true for full specs)."""
    detailed = as_bool(request.args.get("detailed", "false"), "detailed")
    return _json(service.list_registrations(get_state(), model_type, detailed))


@xinference_bp.get("/v1/model_registrations/<model_type>/<name>")
def get_registration(model_type: str, name: str) -> ResponseReturnValue:
    """One registration."""
    return _json(service.get_registration(get_state(), model_type, name))


@xinference_bp.post("/v1/model_registrations/<model_type>")
@changes_state
def register(model_type: str) -> ResponseReturnValue:
    """Register a custom model from its JSON string."""
    body = parse(RegisterBody, request_json())
    return _json(service.register(get_state(), model_type, body))


@xinference_bp.delete("/v1/model_registrations/<model_type>/<name>")
@changes_state
def unregister(model_type: str, name: str) -> ResponseReturnValue:
    """Remove a custom registration."""
    return _json(service.unregister(get_state(), model_type, name))


@xinference_bp.post("/v1/models")
@changes_state
def launch() -> ResponseReturnValue:
    """Launch a model (blocks unless wait_ready=false)."""
    return _json(service.launch(get_state(), request_json(), request.args.get("wait_ready")))


@xinference_bp.get("/v1/models/instances")
def instances() -> ResponseReturnValue:
    """Instance states, filtered by model_name/model_uid."""
    args = request.args
    return _json(service.instances(get_state(), args.get("model_name"), args.get("model_uid")))


@xinference_bp.get("/v1/models/<model_uid>")
def describe(model_uid: str) -> ResponseReturnValue:
    """Describe a launched model."""
    return _json(service.describe(get_state(), model_uid))


@xinference_bp.delete("/v1/models/<model_uid>")
@changes_state
def terminate(model_uid: str) -> ResponseReturnValue:
    """Terminate a model: its process exits."""
    return _json(service.terminate(get_state(), model_uid))


@xinference_bp.get("/v1/models/<model_uid>/progress")
def progress(model_uid: str) -> ResponseReturnValue:
    """Launch progress (0..1)."""
    return _json(service.progress(get_state(), model_uid))


@xinference_bp.post("/v1/embeddings")
def embeddings() -> ResponseReturnValue:
    """OpenAI embeddings."""
    g.berth_errors = OPENAI_ERRORS  # OpenAI clients read error bodies in OpenAI's shape ("detail" is there too)
    return _json(service.embeddings(get_state(), parse(EmbeddingRequest, request_json())))


@xinference_bp.post("/v1/rerank")
def rerank() -> ResponseReturnValue:
    """Xinference/Cohere rerank."""
    return _json(service.rerank(get_state(), parse(RerankRequest, request_json())))
