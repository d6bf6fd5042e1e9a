"""Audio and image models without weights: registrations, which families launch, launch keys, transcript formats."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from berth_server import ipc
from berth_server.engines.facts import check_media_family, engine_name
from berth_server.errors import InvalidRequest
from berth_server.http.app import create_app
from berth_server.models.launch_resolver import parse_launch
from berth_server.protocols.audio.service import subtitles, transcript_text
from berth_server.settings import Settings
from berth_spec.registration import (
    AudioRegistration,
    ImageRegistration,
    RegistrationError,
    parse_registration,
)

from tests.unit.fakes.gateway import FakeControl, FakeGateway

# Xinference's own examples (its audio and image model JSON), as a user registers them.
WHISPER = {"version": 2, "model_name": "whisper-tiny-ct2", "model_family": "whisper", "model_ability": ["audio2text"],
           "model_id": "Systran/faster-whisper-tiny", "multilingual": True,
           "default_model_config": {"beam_size": 1}}
SD = {"version": 2, "model_name": "sd-turbo", "model_family": "stable_diffusion", "model_ability": ["text2image"],
      "model_id": "stabilityai/sd-turbo", "default_model_config": {"num_inference_steps": 1}}


def test_audio_and_image_registrations_keep_xinferences_fields() -> None:
    audio = parse_registration("audio", WHISPER)
    assert isinstance(audio, AudioRegistration) and audio.multilingual and audio.model_ability == ["audio2text"]
    assert audio.model_specs[0].model_id == "Systran/faster-whisper-tiny"  # a flat family is its one spec
    image = parse_registration("image", SD)
    assert isinstance(image, ImageRegistration) and image.default_model_config == {"num_inference_steps": 1}
    with pytest.raises(RegistrationError, match="model_ability"):
        parse_registration("audio", {**WHISPER, "model_ability": ["chat"]})
    with pytest.raises(RegistrationError, match="model_id or model_uri"):
        parse_registration("image", {k: v for k, v in SD.items() if k != "model_id"})
    with pytest.raises(RegistrationError, match="model_family"):
        parse_registration("audio", {k: v for k, v in WHISPER.items() if k != "model_family"})


def test_a_family_no_engine_serves_is_refused_with_the_reason() -> None:
    check_media_family("audio", "whisper")
    check_media_family("image", "stable_diffusion", "diffusers")
    with pytest.raises(InvalidRequest, match="cannot serve the audio model_family 'CosyVoice'.*piper, whisper"):
        check_media_family("audio", "CosyVoice")
    with pytest.raises(InvalidRequest, match="the piper engine does not serve the audio model_family 'whisper'"):
        check_media_family("audio", "whisper", "piper")
    assert engine_name("faster_whisper") == "faster-whisper" and engine_name("piper-tts") == "piper"


def test_launch_keys_are_the_engines_of_the_model_type() -> None:
    assert parse_launch({"model_name": "w", "model_type": "audio", "beam_size": 2}).engine_args == {"beam_size": 2}
    with pytest.raises(InvalidRequest, match="beam_size"):
        parse_launch({"model_name": "m", "model_type": "LLM", "beam_size": 2})
    with pytest.raises(InvalidRequest, match="n_ctx"):
        parse_launch({"model_name": "w", "model_type": "image", "n_ctx": 2})


def _segment(index: int, start: float, end: float, text: str) -> ipc.TranscriptSegment:
    return ipc.TranscriptSegment(request_id="r", id=index, start=start, end=end, text=text)


def test_transcript_text_and_subtitles() -> None:
    segments = [_segment(0, 0.0, 2.5, " Good morning."), _segment(1, 2.5, 3661.25, " See you. ")]
    assert transcript_text(segments) == "Good morning. See you."
    assert subtitles(segments, "srt") == ("1\n00:00:00,000 --> 00:00:02,500\nGood morning.\n\n"
                                          "2\n00:00:02,500 --> 01:01:01,250\nSee you.\n")
    assert subtitles(segments, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nGood morning.\n\n"
                                          "00:00:02.500 --> 01:01:01.250\nSee you.\n")


def test_openapi_describes_the_audio_upload_and_replies(tmp_path: Path) -> None:
    app = create_app(Settings(runtime_dir=tmp_path), gateway=FakeGateway(), control=FakeControl())
    paths = app.test_client().get("/openapi.json").json["paths"]
    upload = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    assert "timestamp_granularities[]" in upload["properties"]
    assert "audio/wav" in paths["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert "application/json" in paths["/v1/images/generations"]["post"]["requestBody"]["content"]
    assert "get" in paths["/v1/audio/voices"]


def test_uploads_have_their_own_size_limit(tmp_path: Path) -> None:
    settings = Settings(runtime_dir=tmp_path, max_body_bytes=1000, max_audio_bytes=200_000)
    client = create_app(settings, gateway=FakeGateway(), control=FakeControl()).test_client()

    def upload(size: int) -> int:
        return client.post("/v1/audio/transcriptions", data={"file": (io.BytesIO(b"\0" * size), "a.wav")},
                           content_type="multipart/form-data").status_code

    assert upload(150_000) != 413  # over BERTH_MAX_BODY_BYTES, under BERTH_MAX_AUDIO_BYTES
    assert upload(300_000) == 413
    assert client.post("/v1/chat/completions", data=b"{" * 2000, content_type="application/json").status_code == 413
