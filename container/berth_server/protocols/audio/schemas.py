"""OpenAI's audio request fields (multipart forms for speech recognition, JSON or a form for speech)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from berth_server.protocols.wire import parse

__all__ = ["SpeechRequest", "TranscriptionRequest", "parse"]

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class _Wire(BaseModel):
    # OpenAI's SDK sends fields Berth does not act on only when they are set; unknown ones are refused.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _kwargs(value: Any) -> dict[str, Any]:
    """Xinference's clients send extra options as a JSON string field named kwargs."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        raise ValueError("kwargs must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise ValueError("kwargs must be a JSON object")  # noqa: TRY004 - pydantic reports ValueErrors
    return parsed


class TranscriptionRequest(_Wire):
    """POST /v1/audio/transcriptions and /v1/audio/translations (the file travels beside these fields)."""

    model: str | None = None
    language: str | None = Field(None, max_length=16)
    prompt: str | None = Field(None, max_length=4096)
    response_format: TranscriptFormat = "json"
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        ["segment"], alias="timestamp_granularities[]")
    stream: bool = False
    # OpenAI's "logprobs" include: refused (the service says why) rather than silently dropped.
    include: list[str] = Field(default_factory=list, alias="include[]")
    kwargs: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @field_validator("kwargs", mode="before")
    @classmethod
    def _kw(cls, value: Any) -> dict[str, Any]:
        return _kwargs(value)

    @field_validator("language", "prompt", "model", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class SpeechRequest(_Wire):
    """POST /v1/audio/speech."""

    model: str | None = None
    input: str = Field(min_length=1)
    voice: str = Field("", max_length=200)  # "" (Xinference's client default): the model's first voice
    response_format: SpeechFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = None
    stream: bool = False  # Xinference's name for stream_format "audio"
    instructions: str | None = None  # a voice prompt (gpt-4o-mini-tts): refused, Piper voices take none
    kwargs: dict[str, Any] = {}

    @field_validator("kwargs", mode="before")
    @classmethod
    def _kw(cls, value: Any) -> dict[str, Any]:
        return _kwargs(value)

    @field_validator("instructions")
    @classmethod
    def _no_instructions(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("instructions are not supported: this server's voices take no voice prompt")
        return value
