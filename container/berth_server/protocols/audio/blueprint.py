"""Thin views for OpenAI's audio routes (multipart uploads for speech recognition)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from berth_server.client.state import get_state
from berth_server.errors import InvalidRequest
from berth_server.protocols.audio import service
from berth_server.protocols.audio.schemas import SpeechRequest, TranscriptionRequest, parse
from berth_server.protocols.openai.errors import OPENAI_ERRORS
from berth_server.protocols.wire import request_json

audio_bp = Blueprint("audio", __name__, url_prefix="/v1/audio")
audio_bp.berth_errors = OPENAI_ERRORS  # type: ignore[attr-defined]  # read by http/errors.py
# Endpoints whose body is an upload: their size limit is BERTH_MAX_AUDIO_BYTES (http/app.py).
UPLOAD_ENDPOINTS = frozenset({"audio.transcriptions", "audio.translations"})


def form_fields() -> dict[str, Any]:
    """A multipart or urlencoded form as a dict: `name[]` fields as lists, the others as strings."""
    fields: dict[str, Any] = {}
    for key in request.form:
        values = request.form.getlist(key)
        fields[key] = values if key.endswith("[]") else values[-1]
    return fields


def uploaded_file() -> bytes:
    """The `file` field's bytes; a 400 when the form has none."""
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest("file is required: send the audio as the multipart field 'file'", param="file")
    return upload.read()


def _transcribe(task: str) -> Any:
    if not request.mimetype.startswith("multipart/form-data"):
        raise InvalidRequest("send a multipart/form-data body with the audio in the field 'file'", param="file")
    body = parse(TranscriptionRequest, form_fields())
    return service.transcription(get_state(), body, uploaded_file(), task)


@audio_bp.post("/transcriptions")
def transcriptions() -> Any:  # a dict, a Response or a WireReply
    """Speech to text in the spoken language (json, text, srt, vtt, verbose_json, or streamed deltas)."""
    return _transcribe("transcribe")


@audio_bp.post("/translations")
def translations() -> Any:
    """Speech to English text."""
    return _transcribe("translate")


@audio_bp.post("/speech")
def speech() -> Any:
    """Text to speech: the whole file, chunked bytes (stream_format audio) or SSE events (stream_format sse)."""
    fields = form_fields() if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded") \
        else request_json()
    return service.speech(get_state(), parse(SpeechRequest, fields))


@audio_bp.get("/voices")
def voices() -> Any:
    """The voices of the speech models (?model= for one)."""
    return service.voices(get_state(), request.args.get("model") or None)
