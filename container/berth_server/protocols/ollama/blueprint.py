"""Thin views for the Ollama routes (/api/*), and the management routes Berth refuses with what to do instead."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue

from berth_server.client.state import get_state
from berth_server.errors import InvalidRequest
from berth_server.protocols.ollama import models, service
from berth_server.protocols.ollama.errors import OLLAMA_ERRORS
from berth_server.protocols.ollama.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequestWire,
    ShowRequest,
    parse,
)
from berth_server.protocols.wire import request_json

ollama_bp = Blueprint("ollama", __name__, url_prefix="/api")
ollama_bp.berth_errors = OLLAMA_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py
# Ollama's root probe (GET / and HEAD /): tools check it before they call /api/*. TGI's `/` is POST only.
ollama_root_bp = Blueprint("ollama_root", __name__)
ollama_root_bp.berth_errors = OLLAMA_ERRORS  # type: ignore[attr-defined]
_STARTED = time.time()  # "modified_at" of listed models: when this worker started serving

HOW_MODELS_ARE_ADDED = ("models are added to Berth through its Xinference API (POST /v1/model_registrations/LLM "
                        "to register weights, POST /v1/models to launch them) or with HF_MODEL_ID when it starts")
# Ollama's model-management routes: what each would do, and what Berth offers instead.
_REFUSED = {
    "pull": "Berth does not pull models: " + HOW_MODELS_ARE_ADDED,
    "push": "Berth does not push models to a registry",
    "create": "Berth does not create models from Modelfiles: " + HOW_MODELS_ARE_ADDED,
    "copy": "Berth does not copy models: launch the same registration again under another model_uid "
            "(POST /v1/models)",
    "delete": "Berth does not delete models: stop a running one with DELETE /v1/models/{uid}, remove a "
              "registration with DELETE /v1/model_registrations/{type}/{name}",
}


@ollama_bp.post("/chat")
def chat() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Chat, streamed as NDJSON unless stream is false."""
    return service.chat(get_state(), parse(ChatRequest, request_json()))


@ollama_bp.post("/generate")
def generate() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Generate from a prompt, streamed as NDJSON unless stream is false."""
    return service.generate(get_state(), parse(GenerateRequestWire, request_json()))


@ollama_bp.post("/embed")
def embed() -> ResponseReturnValue:
    """Embed one text or many."""
    return jsonify(service.embed(get_state(), parse(EmbedRequest, request_json())))


@ollama_bp.post("/embeddings")
def embeddings() -> ResponseReturnValue:
    """Embed one prompt (the older route)."""
    return jsonify(service.embeddings(get_state(), parse(EmbeddingsRequest, request_json())))


@ollama_bp.get("/tags")
def tags() -> ResponseReturnValue:
    """The models Berth serves, and custom registrations that could be launched."""
    return jsonify(models.tags(get_state(), _STARTED))


@ollama_bp.post("/show")
def show() -> ResponseReturnValue:
    """One model's details, model_info, template and capabilities."""
    return jsonify(models.show(get_state(), parse(ShowRequest, request_json()).target, _STARTED))


@ollama_bp.get("/ps")
def ps() -> ResponseReturnValue:
    """The running models."""
    return jsonify(models.ps(get_state(), _STARTED))


@ollama_root_bp.get("/")
def is_running() -> ResponseReturnValue:
    """Ollama's liveness probe: 200 "Ollama is running" (the server is up; /ping says whether a model is ready)."""
    return Response("Ollama is running", mimetype="text/plain")


@ollama_bp.get("/version")
def version() -> ResponseReturnValue:
    """The Ollama API version Berth speaks."""
    return jsonify({"version": models.OLLAMA_API_VERSION})


def _refused(action: str) -> ResponseReturnValue:
    raise InvalidRequest(_REFUSED[action])


@ollama_bp.post("/pull")
def pull() -> ResponseReturnValue:
    """Refused: Berth does not pull models (the error says how they are added)."""
    return _refused("pull")


@ollama_bp.post("/push")
def push() -> ResponseReturnValue:
    """Refused: Berth does not push models."""
    return _refused("push")


@ollama_bp.post("/create")
def create() -> ResponseReturnValue:
    """Refused: Berth does not create models from Modelfiles (the error says how they are added)."""
    return _refused("create")


@ollama_bp.post("/copy")
def copy() -> ResponseReturnValue:
    """Refused: Berth does not copy models."""
    return _refused("copy")


@ollama_bp.delete("/delete")
def delete() -> ResponseReturnValue:
    """Refused: Berth does not delete models (the error says how to stop one)."""
    return _refused("delete")
