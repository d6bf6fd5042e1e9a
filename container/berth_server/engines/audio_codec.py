"""Audio in and out of the model process: uploads decoded by PyAV (as faster-whisper decodes), speech encoded.

Decoding is PyAV's (FFmpeg): wav, flac, mp3, ogg/opus, webm, m4a and whatever else FFmpeg reads. A file
PyAV cannot read as audio is an InvalidRequest (400), never a 500. Encoding: WAV and raw PCM by the
standard library, FLAC and MP3 by PyAV's encoders when this build of FFmpeg has them.
"""

from __future__ import annotations

import io
import struct
import wave
from typing import Any

from berth_server.errors import InvalidRequest

WHISPER_SAMPLE_RATE = 16000
# response_format -> the FFmpeg encoder that writes it (wav and pcm need none).
ENCODERS = {"flac": "flac", "mp3": "libmp3lame"}
STREAMABLE = ("pcm", "wav")  # formats whose chunks can go out as they are made


def decode(data: bytes, max_duration_s: float) -> Any:
    """16 kHz mono float32 samples of an uploaded file; InvalidRequest for non-audio or over-long audio."""
    import av
    from faster_whisper.audio import decode_audio

    if not data:
        raise InvalidRequest("file is empty", param="file")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequest("file holds no audio stream", param="file")
            duration = container.duration / av.time_base if container.duration else None
    except av.FFmpegError as exc:
        raise InvalidRequest(f"file is not audio that can be decoded (wav, flac, mp3, ogg, webm, m4a): {exc}",
                             param="file") from None
    if duration is not None and duration > max_duration_s:
        raise _too_long(duration, max_duration_s)
    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=WHISPER_SAMPLE_RATE)
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidRequest(f"file is not audio that can be decoded: {exc}", param="file") from None
    seconds = len(samples) / WHISPER_SAMPLE_RATE
    if seconds > max_duration_s:  # a container that did not state its duration
        raise _too_long(seconds, max_duration_s)
    if len(samples) == 0:
        raise InvalidRequest("file holds no audio samples", param="file")
    return samples


def _too_long(seconds: float, limit: float) -> InvalidRequest:
    return InvalidRequest(f"audio is {seconds:.1f} s long, over the {limit:g} s limit (BERTH_MAX_AUDIO_SECONDS)",
                          param="file")


def can_encode(response_format: str) -> bool:
    """Whether this build can write `response_format` (mp3 needs FFmpeg's libmp3lame)."""
    if response_format in ("wav", "pcm"):
        return True
    encoder = ENCODERS.get(response_format)
    if encoder is None:
        return False
    try:
        import av
    except ImportError:
        return False
    return encoder in av.codecs_available


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """A whole WAV file of 16-bit mono PCM, as Python's wave module (and so Piper's synthesize_wav) writes it."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setframerate(sample_rate)
        wav.setsampwidth(2)
        wav.setnchannels(1)
        wav.writeframes(pcm)
    return out.getvalue()


def streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header whose sizes say "unknown" (0xFFFFFFFF), for a file streamed before its length is known."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", unknown))


def encode(pcm: bytes, sample_rate: int, response_format: str) -> bytes:
    """16-bit mono PCM as a whole file in `response_format` (wav, pcm, flac, mp3)."""
    if response_format == "pcm":
        return pcm
    if response_format == "wav":
        return wav_bytes(pcm, sample_rate)
    if not can_encode(response_format):
        raise InvalidRequest(f"response_format {response_format!r} cannot be written by this server",
                             param="response_format")
    return _ffmpeg_encode(pcm, sample_rate, response_format)


def _ffmpeg_encode(pcm: bytes, sample_rate: int, response_format: str) -> bytes:
    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format=response_format) as container:
        stream: Any = container.add_stream(ENCODERS[response_format], rate=sample_rate)
        stream.layout = "mono"
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
