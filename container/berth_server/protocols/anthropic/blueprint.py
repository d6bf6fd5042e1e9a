"""Thin views for the Anthropic Messages routes (anthropic-version and anthropic-beta headers are accepted, unread)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from berth_server.client.state import get_state
from berth_server.protocols.anthropic import service
from berth_server.protocols.anthropic.errors import ANTHROPIC_ERRORS
from berth_server.protocols.anthropic.schemas import CountTokensRequest, MessagesRequest
from berth_server.protocols.wire import parse, request_json

anthropic_bp = Blueprint("anthropic", __name__, url_prefix="/v1")
anthropic_bp.berth_errors = ANTHROPIC_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py


@anthropic_bp.post("/messages")
def messages() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Anthropic Messages: a message, or its typed events streamed."""
    return service.messages(get_state(), parse(MessagesRequest, request_json()))


@anthropic_bp.post("/messages/count_tokens")
def count_tokens() -> Any:
    """The input tokens a Messages request would use."""
    return jsonify(service.count_tokens(get_state(), parse(CountTokensRequest, request_json())))
