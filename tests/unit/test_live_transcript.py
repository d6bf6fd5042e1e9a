"""protocols/audio/live.py: which segments of live audio are final, what is decoded again, and the limits."""

from __future__ import annotations

import io
import wave
from types import SimpleNamespace
from typing import Any

import pytest
from berth_server import ipc
from berth_server.errors import InvalidRequest, PayloadTooLarge
from berth_server.launch_config import ModelDescription
from berth_server.protocols.audio.live import LiveTranscript

RATE = 16000


class ScriptedRecognizer:
    """A gateway whose audio model hears each second of audio as one segment: "w<second>" (a trailing half
    second is a segment too); records the durations it was asked to decode."""

    def __init__(self) -> None:
        self.heard: list[float] = []

    def resolve_model(self, name: str | None) -> str:
        return "whisper"

    def describe(self, uid: str) -> ModelDescription:
        return ModelDescription(uid=uid, model_name="whisper", model_type="audio", source="x", engine="faster-whisper",
                                device="cpu", dtype="int8", abilities=["audio2text"], max_input_tokens=0,
                                max_total_tokens=0, context_length=0, max_batch_size=1, pid=1)

    def media(self, uid: str, message: ipc.Transcribe, last: tuple[type, ...]) -> Any:
        with wave.open(io.BytesIO(message.audio)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        self.heard.append(seconds)
        starts = [float(s) for s in range(int(seconds))] + ([float(int(seconds))] if seconds % 1 else [])
        for start in starts:
            yield ipc.TranscriptSegment(request_id="r", id=int(start), start=start, end=min(start + 1, seconds),
                                        text=f" w{len(self.heard)}.{int(start)}")
        yield ipc.Transcribed(request_id="r", language="en", duration=seconds)


def _live(recognizer: ScriptedRecognizer, max_seconds: float = 60.0) -> LiveTranscript:
    state = SimpleNamespace(gateway=recognizer, settings=SimpleNamespace(max_audio_seconds=max_seconds))
    return LiveTranscript(state, None, RATE, step_s=2.0, settle_s=1.0)


def _pcm(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def test_segments_a_second_before_the_end_are_final_and_their_audio_is_dropped() -> None:
    recognizer = ScriptedRecognizer()
    live = _live(recognizer)
    assert live.feed(_pcm(1.5)) == []  # under step_s: nothing decoded yet
    events = live.feed(_pcm(1.5))  # 3 s heard: segments 0-1, 1-2, 2-3; 0-1 and 1-2 end a second before 3
    assert [e["delta"] for e in events] == ["w1.0", " w1.1"]
    assert recognizer.heard == [3.0]
    assert live.feed(_pcm(1.0)) == []  # 2 s pending, of which 1 s decoded already: under step_s of new audio
    done = live.finish()  # the rest (2 s) decoded once more, every segment final
    assert recognizer.heard == [3.0, 2.0]
    assert [e.get("delta") for e in done[:-1]] == [" w2.0", " w2.1"]
    assert done[-1] == {"type": "transcript.text.done", "text": "w1.0 w1.1 w2.0 w2.1",
                        "usage": {"type": "duration", "seconds": 4}}


def test_limits_and_bad_input() -> None:
    with pytest.raises(PayloadTooLarge, match="BERTH_MAX_AUDIO_SECONDS"):
        _live(ScriptedRecognizer(), max_seconds=2).feed(_pcm(3))
    with pytest.raises(InvalidRequest, match="16-bit"):
        _live(ScriptedRecognizer()).feed(b"\x00")
    with pytest.raises(InvalidRequest, match="sample_rate"):
        LiveTranscript(SimpleNamespace(), None, 1000)
