"""OpenAI's audio API over an audio model's events: transcripts in five formats (or streamed), speech as bytes or SSE.

A transcript is made once, from the model's TranscriptSegment events: the streamed deltas are those
segments' text, and every whole format (json, text, srt, vtt, verbose_json) is written from the same
segments. Everything a model refuses (not audio, too long, an unknown voice, a format it cannot
write) arrives as its first event, before any reply starts, so it is a 4xx and never a broken stream.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context

from berth_server import ipc
from berth_server.client.streams import new_request_id
from berth_server.errors import InvalidRequest, PayloadTooLarge
from berth_server.protocols.audio.schemas import SpeechRequest, TranscriptionRequest
from berth_server.protocols.media import media_model, primed
from berth_server.protocols.reply import FoldRules, WireReply

MEDIA_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm",
               "opus": "audio/ogg", "aac": "audio/aac"}


# -- speech recognition ---------------------------------------------------------------------------

def transcription(state: Any, body: TranscriptionRequest, audio: bytes, task: str) -> Any:
    """Transcribe (or translate into English) an uploaded file, as the request's response_format asks."""
    limit = state.settings.max_audio_bytes
    if len(audio) > limit:
        raise PayloadTooLarge(f"file is {len(audio)} bytes, over the {limit}-byte upload limit "
                              "(BERTH_MAX_AUDIO_BYTES)")
    if body.include:
        raise InvalidRequest("include[] is not supported: the transcript carries no token log probabilities",
                             param="include[]")
    if body.stream and body.response_format not in ("json", "text"):
        raise InvalidRequest(f"stream=true sends text deltas; response_format {body.response_format!r} cannot "
                             "stream", param="stream")
    uid, _ = media_model(state, body.model, "audio2text", "recognise speech")
    message = ipc.Transcribe(request_id=new_request_id(), audio=audio, task=task,
                             language=body.language, prompt=body.prompt, temperature=body.temperature,
                             word_timestamps="word" in body.timestamp_granularities)
    events = state.gateway.media(uid, message, (ipc.Transcribed,))
    stream = primed(events)
    if body.stream:
        return WireReply(parts=[_stream_events(stream)], rules=FoldRules(concat=frozenset({"delta"})),
                         whole=lambda folded: folded[0], stream=True, on_close=events.close)
    segments: list[ipc.TranscriptSegment] = []
    done: ipc.Transcribed | None = None
    for event in stream:
        if isinstance(event, ipc.TranscriptSegment):
            segments.append(event)
        else:
            done = event
    assert done is not None
    return _whole(body, task, segments, done)


def is_audio(mimetype: str) -> bool:
    """Whether a Content-Type says the body is an audio (or audio-bearing video) file."""
    return mimetype.startswith("audio/") or mimetype in ("video/webm", "video/ogg", "video/mp4")


def transcribe_upload(state: Any, audio: bytes, model: str | None) -> Any:
    """A raw audio body (SageMaker's /invocations with an audio Content-Type), transcribed as OpenAI's json."""
    return transcription(state, TranscriptionRequest.model_validate({"model": model}), audio, "transcribe")


def piece(text_so_far: str, segment_text: str) -> str:
    """What a segment adds to the transcript: its text without trailing space (nor leading space, at the start)."""
    return segment_text.rstrip() if text_so_far else segment_text.strip()


def transcript_text(segments: list[ipc.TranscriptSegment]) -> str:
    """The whole text: the same pieces the stream sends as deltas, joined."""
    text = ""
    for segment in segments:
        text += piece(text, segment.text)
    return text


def usage(duration: float) -> dict[str, Any]:
    """OpenAI's usage of a duration-billed transcription: whole seconds of audio."""
    return {"type": "duration", "seconds": math.ceil(duration)}


def _stream_events(events: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """OpenAI's transcript.text.delta per segment, then transcript.text.done with the whole text."""
    text = ""
    for event in events:
        if isinstance(event, ipc.TranscriptSegment):
            delta = piece(text, event.text)
            if delta:
                text += delta
                yield {"type": "transcript.text.delta", "delta": delta}
        else:
            yield {"type": "transcript.text.done", "text": text, "usage": usage(event.duration)}


def _whole(body: TranscriptionRequest, task: str, segments: list[ipc.TranscriptSegment],
           done: ipc.Transcribed) -> Any:
    text = transcript_text(segments)
    fmt = body.response_format
    if fmt == "json":
        return {"text": text, "usage": usage(done.duration)}
    if fmt == "text":
        return Response(text + "\n", mimetype="text/plain")
    if fmt in ("srt", "vtt"):
        return Response(subtitles(segments, fmt), mimetype="text/vtt" if fmt == "vtt" else "application/x-subrip")
    verbose: dict[str, Any] = {
        "task": task, "language": done.language, "duration": done.duration, "text": text,
        "segments": [{"id": s.id, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
                      "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                      "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
                     for s in segments],
        "usage": usage(done.duration),
    }
    if "word" in body.timestamp_granularities:
        verbose["words"] = [word for s in segments for word in s.words]
    if "segment" not in body.timestamp_granularities:
        verbose.pop("segments")
    return verbose


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(segments: list[ipc.TranscriptSegment], fmt: str) -> str:
    """SubRip or WebVTT cues, one per segment."""
    if fmt == "vtt":
        cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
        return "WEBVTT\n\n" + "\n".join(cues)
    cues = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(segments, start=1)]
    return "\n".join(cues)


# -- speech synthesis -----------------------------------------------------------------------------

def speech(state: Any, body: SpeechRequest) -> Any:
    """Speak the input in a voice: the whole file, its bytes as they are made, or OpenAI's SSE events."""
    limit = state.settings.max_speech_chars
    if len(body.input) > limit:
        raise InvalidRequest(f"input is {len(body.input)} characters, over the {limit}-character limit "
                             "(BERTH_MAX_SPEECH_CHARS)", param="input")
    uid, _ = media_model(state, body.model, "text2audio", "synthesize speech")
    stream_format = body.stream_format or ("audio" if body.stream else None)
    message = ipc.Speak(request_id=new_request_id(), text=body.input, voice=body.voice, speed=body.speed,
                        response_format=body.response_format, stream=stream_format is not None)
    events = state.gateway.media(uid, message, (ipc.SpeechDone,))
    stream = primed(events)
    mimetype = MEDIA_TYPES[body.response_format]
    if stream_format == "sse":
        return WireReply(parts=[_speech_events(stream, body.input)], rules=FoldRules(), whole=lambda f: f[0],
                         stream=True, on_close=events.close)
    if stream_format == "audio":
        chunks = (event.data for event in stream if isinstance(event, ipc.SpeechChunk))
        return Response(stream_with_context(_closing(chunks, events)), mimetype=mimetype)
    data = b"".join(event.data for event in stream if isinstance(event, ipc.SpeechChunk))
    return Response(data, mimetype=mimetype)


def _closing(chunks: Iterator[bytes], events: Any) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        events.close()  # a client that left aborts the synthesis


def _speech_events(events: Iterator[Any], text: str) -> Iterator[dict[str, Any]]:
    """speech.audio.delta with base64 audio per chunk, then speech.audio.done."""
    for event in events:
        if isinstance(event, ipc.SpeechChunk):
            yield {"type": "speech.audio.delta", "audio": base64.b64encode(event.data).decode()}
        else:
            # Piper counts no tokens; OpenAI's usage fields are there, counting characters in and samples out.
            yield {"type": "speech.audio.done", "usage": {"input_tokens": len(text), "output_tokens": event.samples,
                                                          "total_tokens": len(text) + event.samples}}


def voices(state: Any, model: str | None) -> dict[str, Any]:
    """The voices of one speech model, or of every ready one."""
    uids = [state.gateway.resolve_model(model)] if model else list(state.gateway.statuses())
    listed = []
    for uid in uids:
        status = state.gateway.statuses().get(uid) or {}
        description = status.get("description") or {}
        if model is None and "text2audio" not in description.get("abilities", []):
            continue
        media = description.get("media") or {}
        if model is not None and "text2audio" not in description.get("abilities", []):
            raise InvalidRequest(f"model '{uid}' is not a speech-synthesis model; it has no voices", param="model")
        listed += [{"id": name, "name": name, "model": uid, "language": media.get("language")}
                   for name in media.get("voices", [])]
    return {"object": "list", "voices": listed, "data": listed}
