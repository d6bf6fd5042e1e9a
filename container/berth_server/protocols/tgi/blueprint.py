"""TGI routes: POST /, /generate, /generate_stream, /tokenize; GET /info, /health. Thin views."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from berth_server import __version__
from berth_server.client.state import get_state
from berth_server.errors import DefaultModelNotReady
from berth_server.protocols.tgi import service
from berth_server.protocols.tgi.errors import TGI_ERRORS
from berth_server.protocols.tgi.schemas import GenerateBody, TokenizeBody, parse
from berth_server.protocols.wire import request_json

tgi_bp = Blueprint("tgi", __name__)
tgi_bp.berth_errors = TGI_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py


def _default_model() -> str:
    """TGI serves one model: the default."""
    return get_state().gateway.resolve_model(None)


@tgi_bp.post("/")
def compat_generate() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """TGI's POST /: a list [{generated_text, details}], or token events when "stream" is true."""
    body = parse(GenerateBody, request_json())
    return service.reply(get_state(), [body], _default_model(), stream=body.stream)


@tgi_bp.post("/generate")
def generate() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """TGI's POST /generate: one {generated_text, details?} object."""
    return service.reply(get_state(), [parse(GenerateBody, request_json())], _default_model(), stream=False,
                         single=True)


@tgi_bp.post("/generate_stream")
def generate_stream() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """TGI's POST /generate_stream: SSE token events; the last carries generated_text and details."""
    return service.reply(get_state(), [parse(GenerateBody, request_json())], _default_model(), stream=True)


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
    if not get_state().gateway.default_ready():
        raise DefaultModelNotReady()  # in TGI's error shape, as TGI answers it
    return jsonify({"status": "ok"})
