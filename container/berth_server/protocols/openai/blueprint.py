"""Thin views for the OpenAI /v1 routes."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint

from berth_server.client.state import get_state
from berth_server.protocols.openai import service
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest, parse
from berth_server.protocols.wire import request_json

openai_bp = Blueprint("openai", __name__, url_prefix="/v1")
openai_bp.berth_errors = OPENAI_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py
_STARTED = int(time.time())  # "created" for listed models: when this worker started serving


@openai_bp.post("/chat/completions")
def chat_completions() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Chat completion, streaming or not."""
    return service.chat_completion(get_state(), parse(ChatCompletionRequest, request_json()))


@openai_bp.post("/completions")
def completions() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Text completion, streaming or not."""
    return service.completion(get_state(), parse(CompletionRequest, request_json()))


@openai_bp.get("/models")
def models() -> dict[str, Any]:
    """The models this server runs."""
    return service.list_models(get_state(), _STARTED)
