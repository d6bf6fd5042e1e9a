"""Thin view for OpenAI's image generation."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from berth_server.client.state import get_state
from berth_server.protocols.images import service
from berth_server.protocols.images.schemas import ImageRequest, parse
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.wire import request_json

images_bp = Blueprint("images", __name__, url_prefix="/v1/images")
images_bp.berth_errors = OPENAI_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py


@images_bp.post("/generations")
def generations() -> Any:
    """Images from a prompt (b64_json; seed and num_inference_steps as fields or in Xinference's kwargs)."""
    return service.generations(get_state(), parse(ImageRequest, request_json()))
