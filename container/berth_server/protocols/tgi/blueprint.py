"""TGI routes: POST /, /generate, /generate_stream, /tokenize; GET /info, /health. Thin views."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from berth_server import __version__
from berth_server.frontend.errors import request_json
from berth_server.frontend.sse import sse_response
from berth_server.frontend.state import get_state
from berth_server.protocols.tgi import service
from berth_server.protocols.tgi.schemas import GenerateBody, TokenizeBody, parse

tgi_bp = Blueprint("tgi", __name__)
tgi_bp.berth_family = "tgi"  # type: ignore[attr-defined]  # read by frontend/errors.py


def start_generation(body: GenerateBody) -> service.TgiGeneration:
    """Start a TGI generation on the default model (TGI serves one model)."""
    state = get_state()
    uid = state.gateway.resolve_model(None)
    return service.TgiGeneration(state.gateway, body, uid, state.metrics)


def stream_reply(generation: service.TgiGeneration) -> Response:
    """TGI token events as SSE; no [DONE] (TGI's stream ends when the connection closes)."""
    return sse_response(generation.sse_chunks(), on_close=generation.stream.close)


@tgi_bp.post("/")
def compat_generate() -> Any:
    """TGI's POST /: a list [{generated_text, details}], or token events when "stream" is true."""
    body = parse(GenerateBody, request_json())
    generation = start_generation(body)
    if body.stream:
        return stream_reply(generation)
    return jsonify([generation.reply()])


@tgi_bp.post("/generate")
def generate() -> Any:
    """TGI's POST /generate: one {generated_text, details?} object."""
    generation = start_generation(parse(GenerateBody, request_json()))
    return jsonify(generation.reply())


@tgi_bp.post("/generate_stream")
def generate_stream() -> Response:
    """TGI's POST /generate_stream: SSE token events; the last carries generated_text and details."""
    return stream_reply(start_generation(parse(GenerateBody, request_json())))


@tgi_bp.post("/tokenize")
def tokenize() -> Any:
    """TGI's POST /tokenize: [{id, text, start, stop}]."""
    body = parse(TokenizeBody, request_json())
    gateway = get_state().gateway
    return jsonify(service.tokenize(gateway, gateway.resolve_model(None), body))


@tgi_bp.get("/info")
def info() -> Any:
    """TGI's GET /info for the default model."""
    state = get_state()
    uid = state.gateway.resolve_model(None)
    return jsonify(service.info(state.gateway, state.settings, uid, __version__))


@tgi_bp.get("/health")
def health() -> Any:
    """TGI's GET /health: 200 when the default model is ready, else 503."""
    if get_state().gateway.default_ready():
        return jsonify({"status": "ok"})
    body = {"error": "model is not ready", "error_type": "healthcheck", "detail": "model is not ready"}
    return jsonify(body), 503
