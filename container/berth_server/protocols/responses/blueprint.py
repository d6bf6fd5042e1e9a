"""Thin views for OpenAI Responses: /v1/responses, its stored responses, their input items, and input_tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, request
from flask.blueprints import BlueprintSetupState

from berth_server.client.state import get_state
from berth_server.errors import InvalidRequest
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.responses import service
from berth_server.protocols.responses.listing import input_items_page
from berth_server.protocols.responses.schemas import CreateResponse, ResponseInputs
from berth_server.protocols.responses.store import ResponseStore
from berth_server.protocols.wire import parse, request_json

responses_bp = Blueprint("responses", __name__, url_prefix="/v1/responses")
responses_bp.berth_errors = OPENAI_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py
STORE_FILE = "responses.sqlite3"


@responses_bp.record_once
def _make_store(setup: BlueprintSetupState) -> None:
    """One store per app, in the runtime dir every worker shares (the launcher names it for them all)."""
    settings = setup.app.extensions["berth"].settings
    setup.app.extensions["berth_responses"] = ResponseStore(
        Path(settings.resolved_runtime_dir()) / STORE_FILE, settings.responses_store_max_count,
        settings.responses_store_max_bytes)


def _store() -> ResponseStore:
    store: ResponseStore = current_app.extensions["berth_responses"]
    return store


@responses_bp.post("")
def create() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """Create a model response (OpenAI Responses), streamed as typed events or whole."""
    return service.create_response(get_state(), _store(), parse(CreateResponse, request_json()))


@responses_bp.post("/input_tokens")
def input_tokens() -> dict[str, Any]:
    """Count the input tokens a response request would use."""
    return service.count_input_tokens(get_state(), _store(), parse(ResponseInputs, request_json()))


@responses_bp.get("/<response_id>")
def retrieve(response_id: str) -> dict[str, Any]:
    """A stored response."""
    if request.args.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidRequest("stream=true replays background responses, which Berth does not run", param="stream")
    return _store().get(response_id).response


@responses_bp.delete("/<response_id>")
def delete(response_id: str) -> dict[str, Any]:
    """Delete a stored response."""
    _store().delete(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@responses_bp.get("/<response_id>/input_items")
def input_items(response_id: str) -> dict[str, Any]:
    """The input items a stored response answered (earlier turns' included), a page at a time."""
    return input_items_page(_store().get(response_id).items, request.args)
