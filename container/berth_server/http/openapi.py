"""GET /openapi.json: every route of the app, with request bodies from the pydantic schemas that validate them.

The route list comes from the app's own URL map, so a new route is described (if only by its
path) without anyone remembering to; REQUEST_BODIES names the wire model each body is parsed with.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from berth_server import __version__
from berth_server.protocols.anthropic.schemas import CountTokensRequest, MessagesRequest
from berth_server.protocols.audio.schemas import SpeechRequest, TranscriptionRequest
from berth_server.protocols.images.schemas import ImageRequest
from berth_server.protocols.ollama.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequestWire,
    ShowRequest,
)
from berth_server.protocols.openai.schemas import ChatCompletionRequest, CompletionRequest
from berth_server.protocols.responses.schemas import CreateResponse, ResponseInputs
from berth_server.protocols.sagemaker.schemas import InvocationTgiBody
from berth_server.protocols.sagemaker.sessions import SessionBody
from berth_server.protocols.tgi.schemas import GenerateBody, TokenizeBody
from berth_server.protocols.xinference.schemas import (
    EmbeddingRequest,
    LaunchBody,
    RegisterBody,
    RerankRequest,
)

# endpoint -> the wire models its body is validated with (several: any of them, dispatched on shape).
REQUEST_BODIES: dict[str, tuple[type[BaseModel], ...]] = {
    "openai.chat_completions": (ChatCompletionRequest,),
    "openai.completions": (CompletionRequest,),
    "responses.create": (CreateResponse,),
    "responses.input_tokens": (ResponseInputs,),
    "tgi.compat_generate": (GenerateBody,),
    "tgi.generate": (GenerateBody,),
    "tgi.generate_stream": (GenerateBody,),
    "tgi.tokenize": (TokenizeBody,),
    "sagemaker.invocations": (ChatCompletionRequest, CompletionRequest, InvocationTgiBody, SessionBody),
    "xinference.register": (RegisterBody,),
    "xinference.launch": (LaunchBody,),
    "xinference.embeddings": (EmbeddingRequest,),
    "xinference.rerank": (RerankRequest,),
    "anthropic.messages": (MessagesRequest,),
    "anthropic.count_tokens": (CountTokensRequest,),
    "ollama.chat": (ChatRequest,),
    "ollama.generate": (GenerateRequestWire,),
    "ollama.embed": (EmbedRequest,),
    "ollama.embeddings": (EmbeddingsRequest,),
    "ollama.show": (ShowRequest,),
    "audio.speech": (SpeechRequest,),
    "images.generations": (ImageRequest,),
}
# Endpoints that answer with server-sent events (when the body asks for a stream, or always).
STREAMING = {"openai.chat_completions", "openai.completions", "responses.create", "tgi.compat_generate",
             "sagemaker.invocations", "anthropic.messages"}
ALWAYS_STREAMING = {"tgi.generate_stream"}
# Endpoints that answer with NDJSON (one JSON object a line) unless the body says "stream": false.
NDJSON_STREAMING = {"ollama.chat", "ollama.generate"}
QUERY_PARAMETERS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "xinference.launch": (("wait_ready", {"type": "string", "enum": ["true", "false"]}),),
    "xinference.list_registrations": (("detailed", {"type": "string", "enum": ["true", "false"]}),),
    "xinference.instances": (("model_name", {"type": "string"}), ("model_uid", {"type": "string"})),
    "responses.input_items": (("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                              ("order", {"type": "string", "enum": ["asc", "desc"]}), ("after", {"type": "string"})),
}
TEXT_PLAIN = {"berth_core.metrics", "ollama_root.is_running"}
# SageMaker's session requests are answered in text ("Session <id> created"), as AWS's standard answers them.
SESSION_REPLIES = {"sagemaker.invocations"}
# Multipart uploads (OpenAI's audio routes): the form's fields, and the file.
MULTIPART_BODIES: dict[str, type[BaseModel]] = {"audio.transcriptions": TranscriptionRequest,
                                                 "audio.translations": TranscriptionRequest}
# Endpoints whose 200 is not JSON (or not only): their media types.
REPLY_TYPES: dict[str, tuple[str, ...]] = {
    "audio.transcriptions": ("application/json", "text/plain", "text/vtt", "application/x-subrip",
                             "text/event-stream"),
    "audio.translations": ("application/json", "text/plain", "text/vtt", "application/x-subrip", "text/event-stream"),
    "audio.speech": ("audio/wav", "audio/pcm", "audio/flac", "audio/mpeg", "text/event-stream"),
}
# Every error body, whatever the protocol, carries "detail" (http/errors.py).
ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}
# OpenAPI 3.1 reads a text/event-stream schema as the schema of each event (the spec's generic SSE event);
# `data` carries the protocol's JSON chunk (or OpenAI's closing "[DONE]").
SSE_EVENT: dict[str, Any] = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                              "id": {"type": "string"}, "retry": {"type": "integer", "minimum": 0}}}
_CONVERTER = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def _components() -> tuple[dict[Any, Any], dict[str, Any]]:
    models = {model for bodies in REQUEST_BODIES.values() for model in bodies}
    keys, definitions = models_json_schema([(model, "validation") for model in sorted(models, key=str)],
                                           ref_template="#/components/schemas/{model}")
    return dict(keys), dict(definitions.get("$defs", {}))


def _body(endpoint: str, refs: dict[Any, Any]) -> dict[str, Any]:
    schemas = [refs[(model, "validation")] for model in REQUEST_BODIES[endpoint]]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _multipart(endpoint: str) -> dict[str, Any]:
    schema = MULTIPART_BODIES[endpoint].model_json_schema(by_alias=True)
    schema.pop("title", None)
    schema["properties"] = {"file": {"type": "string", "format": "binary"}, **schema.get("properties", {})}
    schema["required"] = ["file"]
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _responses(endpoint: str) -> dict[str, Any]:
    ok: dict[str, dict[str, Any]]
    if endpoint in REPLY_TYPES:
        ok = {media_type: {"schema": SSE_EVENT if media_type == "text/event-stream" else {}}
              for media_type in REPLY_TYPES[endpoint]}
    elif endpoint in TEXT_PLAIN:
        ok = {"text/plain": {"schema": {"type": "string"}}}
    elif endpoint.startswith("ui."):  # the web UI's page and static files
        ok = {"*/*": {"schema": {}}}
    elif endpoint in ALWAYS_STREAMING:
        ok = {"text/event-stream": {"schema": SSE_EVENT}}
    else:
        ok = {"application/json": {"schema": {}}}
        if endpoint in STREAMING:
            ok["text/event-stream"] = {"schema": SSE_EVENT}
        if endpoint in NDJSON_STREAMING:
            ok["application/x-ndjson"] = {"schema": {}}
        if endpoint in SESSION_REPLIES:
            ok["text/plain"] = {"schema": {"type": "string"}}
    return {"200": {"description": "OK", "content": ok},
            "default": {"description": "An error; `detail` says what and why",
                        "content": {"application/json": {"schema": ERROR}}}}


def build_openapi(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every route of `app`."""
    refs, components = _components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.websocket:  # the bidirectional stream is a WebSocket, not HTTP
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            view = app.view_functions[rule.endpoint]
            operation: dict[str, Any] = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": (view.__doc__ or rule.endpoint).strip().splitlines()[0],
                "tags": [rule.endpoint.split(".")[0]],
                "responses": _responses(rule.endpoint),
            }
            parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                          for name in rule.arguments]
            parameters += [{"name": name, "in": "query", "required": False, "schema": schema}
                           for name, schema in QUERY_PARAMETERS.get(rule.endpoint, ())]
            if parameters:
                operation["parameters"] = parameters
            if rule.endpoint in REQUEST_BODIES:
                operation["requestBody"] = _body(rule.endpoint, refs)
            elif rule.endpoint in MULTIPART_BODIES:
                operation["requestBody"] = _multipart(rule.endpoint)
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Berth", "version": __version__,
                 "description": "SageMaker, TGI, OpenAI, Anthropic, Ollama and Xinference APIs for open LLMs."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


def install_openapi(app: Flask) -> None:
    """Serve GET /openapi.json (built once per app, on first request, when every route is registered)."""

    def openapi() -> ResponseReturnValue:
        """This server's OpenAPI document."""
        cached = current_app.extensions.setdefault("berth_openapi", build_openapi(current_app))
        return jsonify(cached)

    app.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
