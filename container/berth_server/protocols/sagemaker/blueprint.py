"""SageMaker hosting routes: GET /ping and POST /invocations, dispatched on the body's shape.

Dispatch (TGI >= 2.4 behaviour, in every mode): a body with "messages" is an OpenAI chat
completion, one with "prompt" an OpenAI completion, one with "inputs" a TGI generation (a list
reply [{generated_text, details}] like TGI's SageMaker image; "inputs" may be a list of prompts,
answered one entry per prompt). "stream": true streams SSE for any shape. MESSAGES_API_ENABLED
is read and accepted for compatibility with TGI's SageMaker image: as in TGI >= 2.4 the shape
decides, and the setting only breaks the tie when a body carries both "messages" and "inputs"
(chat when true, TGI when false). Any other body is a 422 naming the accepted shapes. Errors on
TGI-shaped bodies have TGI bodies; chat/prompt bodies get OpenAI error bodies (400 on validation).
X-Amzn-SageMaker-Custom-Attributes `route=/path` sends the invocation to another route (routes.py); Accept is
accepted (replies are JSON, or SSE when streaming);
X-Amzn-SageMaker-Inference-Id is echoed back. Stateful sessions (`{"requestType": ...}` bodies and the
X-Amzn-SageMaker-Session-Id header) are sessions.py's.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from berth_server.client.state import get_state
from berth_server.errors import DefaultModelNotReady
from berth_server.protocols.audio import service as audio_service
from berth_server.protocols.openai import service as openai_service
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest
from berth_server.protocols.openai.schemas import parse as parse_openai
from berth_server.protocols.route_policy import changes_state
from berth_server.protocols.sagemaker import adapters, routes, service, sessions
from berth_server.protocols.sagemaker.schemas import shape_of
from berth_server.protocols.tgi.errors import TGI_ERRORS
from berth_server.protocols.wire import request_json

sagemaker_bp = Blueprint("sagemaker", __name__)
# Errors before the shape is known (bad JSON, unknown shape) use TGI's bodies, as TGI's image does.
sagemaker_bp.berth_errors = TGI_ERRORS  # type: ignore[attr-defined]

INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"


@sagemaker_bp.get("/ping")
def ping() -> Any:
    """SageMaker health check: 200 only when the default model is ready."""
    if not get_state().gateway.default_ready():
        raise DefaultModelNotReady()  # a 503 in this blueprint's error shape (SageMaker reads only the status)
    return jsonify({"status": "healthy"})


@sagemaker_bp.post("/invocations")
def invocations() -> Any:  # a WireReply, rendered by the app (http/replies.py)
    """One SageMaker invocation: routed by its custom attributes, else answered by the protocol its body speaks."""
    state = get_state()
    attributes = routes.custom_attributes(request.headers.get(routes.CUSTOM_ATTRIBUTES_HEADER))
    routed = routes.resolve(attributes, routes.allowed_patterns(state.settings.invocations_routes))
    session = request.headers.get(sessions.SESSION_HEADER)
    if routed is not None:
        routed.use_error_shape()
        sessions.bind(state, session)  # the routed view fetches the bound state itself
        return routed()
    if audio_service.is_audio(request.mimetype):  # an audio Content-Type: the body is the file to transcribe
        g.berth_errors = OPENAI_ERRORS
        return audio_service.transcribe_upload(state, request.get_data(), attributes.get("model"))
    body = request_json()
    if sessions.is_session_request(body):
        g.berth_errors = OPENAI_ERRORS  # plain statuses: a malformed session request is a 400 on any wire
        return sessions.handle(state, body, session)
    shape = shape_of(body, state.settings.messages_api_enabled)
    g.berth_errors = TGI_ERRORS if shape == "tgi" else OPENAI_ERRORS
    state = sessions.bind(state, session)
    adapter = adapters.adapter_from_headers(request.headers)
    if adapter is not None:
        body = adapters.with_adapter(body, shape, adapter)
    body = service.endpoint_model(state.gateway, body)
    if shape == "tgi":  # a "model" naming a running model picks it, as for chat and prompt bodies
        return service.invoke_tgi(state, state.gateway.resolve_model(body.get("model")), body)
    if shape == "chat":
        return openai_service.chat_completion(state, parse_openai(ChatCompletionRequest, body))
    return openai_service.completion(state, parse_openai(CompletionRequest, body))


@sagemaker_bp.post("/adapters")
@changes_state
def register_adapter() -> Response:
    """Register a LoRA adapter (JSON body, or the same keys as query parameters)."""
    body = request_json() if request.get_data() else dict(request.args)
    return Response(adapters.register(get_state(), body), mimetype="text/plain")


@sagemaker_bp.delete("/adapters/<name>")
@changes_state
def unregister_adapter(name: str) -> Response:
    """Remove a LoRA adapter."""
    return Response(adapters.unregister(get_state(), name), mimetype="text/plain")


@sagemaker_bp.get("/adapters")
def list_adapters() -> Any:
    """The registered LoRA adapters."""
    return jsonify(adapters.listing(get_state()))


@sagemaker_bp.after_request
def echo_inference_id(response: Response) -> Response:
    """Echo SageMaker's inference id so a caller can match replies (and data capture) to requests."""
    inference_id = request.headers.get(INFERENCE_ID_HEADER)
    if inference_id:
        response.headers[INFERENCE_ID_HEADER] = inference_id
    return response
