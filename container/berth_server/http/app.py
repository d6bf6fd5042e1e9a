"""The Flask app factory: builds settings-bound collaborators and registers every protocol's blueprint."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from flask.typing import ResponseReturnValue

from berth_server.client.state import FrontendState
from berth_server.errors import PayloadTooLarge
from berth_server.http.auth import install_auth
from berth_server.http.bidi_stream import install_bidi_stream
from berth_server.http.errors import register_error_handlers
from berth_server.http.metrics import FrontendMetrics, install_metrics
from berth_server.http.openapi import install_openapi
from berth_server.http.replies import render
from berth_server.http.webui import ui_bp
from berth_server.protocols.anthropic.blueprint import anthropic_bp
from berth_server.protocols.audio.blueprint import UPLOAD_ENDPOINTS, audio_bp
from berth_server.protocols.images.blueprint import images_bp
from berth_server.protocols.ollama.blueprint import ollama_bp, ollama_root_bp
from berth_server.protocols.openai.blueprint import openai_bp
from berth_server.protocols.reply import WireReply
from berth_server.protocols.responses.blueprint import responses_bp
from berth_server.protocols.sagemaker.blueprint import sagemaker_bp
from berth_server.protocols.tgi.blueprint import tgi_bp
from berth_server.protocols.xinference.blueprint import xinference_bp
from berth_server.settings import Settings

log = logging.getLogger(__name__)

# Every protocol's blueprint; OpenAI last so Xinference's /v1/models/<uid> wins its paths.
PROTOCOL_BLUEPRINTS = (sagemaker_bp, tgi_bp, xinference_bp, anthropic_bp, ollama_bp, ollama_root_bp, openai_bp,
                       responses_bp, audio_bp, images_bp)
# Room for a multipart form's boundaries and fields around an upload of the largest allowed size.
MULTIPART_SLACK_BYTES = 64 * 1024


class BerthFlask(Flask):
    """Flask that also takes a protocol's WireReply as a view's return value (streamed or folded)."""

    def make_response(self, rv: ResponseReturnValue | WireReply) -> Response:
        """Render a WireReply (http/replies.py); anything else as Flask does.

        A whole reply is folded here, after the view returned, so an error raised while folding goes
        to the same error handlers a view's error would (http/errors.py), not to Flask's bare 500.
        """
        if isinstance(rv, WireReply):
            try:
                return render(rv)
            except Exception as exc:  # noqa: BLE001 - handed to the registered handlers, which map every error
                return super().make_response(self.handle_user_exception(exc))
        return super().make_response(rv)


def _check_content_length(settings: Settings) -> None:
    """Refuse an oversized body from its Content-Length before reading it (uploads have their own, larger limit)."""
    limit, name = settings.max_body_bytes, "BERTH_MAX_BODY_BYTES"
    if request.endpoint in UPLOAD_ENDPOINTS:
        limit, name = max(limit, settings.max_audio_bytes + MULTIPART_SLACK_BYTES), "BERTH_MAX_AUDIO_BYTES"
    request.max_content_length = limit  # also bounds a chunked body while it is read
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over the {limit}-byte limit ({name})")


def create_app(settings: Settings, gateway: Any = None, control: Any = None) -> Flask:
    """Build the frontend for these settings; tests pass fake gateway/control objects."""
    app = BerthFlask("berth_server.http", static_folder=None)  # no file serving: every route is an API route
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes  # uploads: raised per request (_check_content_length)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    runtime_dir = settings.resolved_runtime_dir()
    if control is None:
        from berth_server.client.control_client import ControlClient

        control = ControlClient(runtime_dir)
    if gateway is None:
        from berth_server.client.gateway import Gateway

        gateway = Gateway(settings, control, runtime_dir)
    app.extensions["berth"] = FrontendState(settings=settings, gateway=gateway, control=control,
                                            metrics=FrontendMetrics(gateway, settings.prometheus_multiproc_dir))
    register_error_handlers(app)
    install_auth(app, settings.api_key, settings.metrics_public)
    app.before_request(lambda: _check_content_length(settings))
    install_metrics(app)
    for blueprint in PROTOCOL_BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.register_blueprint(ui_bp)
    install_bidi_stream(app, settings.max_body_bytes)
    install_openapi(app)
    return app
