"""Live speech recognition: 16-bit PCM arrives in pieces (the bidirectional stream's binary frames) and the
transcript goes out as OpenAI's transcript.text.delta events while the speaker is still talking.

The audio not yet transcribed for good is decoded again each time `step_s` more of it has arrived. Segments
the model ends more than `settle_s` before the end of what it heard are final: their text is sent and
their audio dropped; the last, still-changing segment waits for more audio. At the end the rest is decoded
once more and transcript.text.done carries the whole text (the deltas, joined).
"""

from __future__ import annotations

import io
import wave
from typing import Any

from berth_server import ipc
from berth_server.client.streams import new_request_id
from berth_server.errors import InvalidRequest, PayloadTooLarge
from berth_server.protocols.audio.service import piece, usage
from berth_server.protocols.media import media_model

SAMPLE_BYTES = 2  # 16-bit little-endian, mono


class LiveTranscript:
    """One live transcription: feed() PCM as it comes, finish() at the end; both return the events to send."""

    def __init__(self, state: Any, model: str | None, sample_rate: int = 16000, language: str | None = None,
                 prompt: str | None = None, step_s: float = 2.0, settle_s: float = 1.0) -> None:
        if not 8000 <= sample_rate <= 48000:
            raise InvalidRequest(f"sample_rate must be between 8000 and 48000 Hz, not {sample_rate}",
                                 param="sample_rate")
        self.state = state
        self.uid, _ = media_model(state, model, "audio2text", "recognise speech")
        self.sample_rate, self.language, self.prompt = sample_rate, language, prompt
        self.step_bytes = int(step_s * sample_rate) * SAMPLE_BYTES
        self.settle_s = settle_s
        self.pending = bytearray()  # audio whose text is not final yet
        self.decoded_bytes = 0  # of `pending`, how much the last decode heard
        self.heard_s = 0.0  # all audio received
        self.text = ""

    def feed(self, pcm: bytes) -> list[dict[str, Any]]:
        """Take a piece of audio; the deltas of segments that became final (none until step_s more was heard)."""
        if len(pcm) % SAMPLE_BYTES:
            raise InvalidRequest("audio frames carry 16-bit PCM: a whole number of 2-byte samples", param="audio")
        self.heard_s += len(pcm) / SAMPLE_BYTES / self.sample_rate
        limit = self.state.settings.max_audio_seconds
        if self.heard_s > limit:
            raise PayloadTooLarge(f"live audio is over the {limit:g}-second limit (BERTH_MAX_AUDIO_SECONDS)")
        self.pending += pcm
        if len(self.pending) - self.decoded_bytes < self.step_bytes:
            return []
        return self._decode(final=False)

    def finish(self) -> list[dict[str, Any]]:
        """Decode what is left; its deltas, then transcript.text.done with the whole text."""
        events = self._decode(final=True) if self.pending else []
        return [*events, {"type": "transcript.text.done", "text": self.text, "usage": usage(self.heard_s)}]

    def _decode(self, final: bool) -> list[dict[str, Any]]:
        self.decoded_bytes = len(self.pending)
        heard_s = len(self.pending) / SAMPLE_BYTES / self.sample_rate
        message = ipc.Transcribe(request_id=new_request_id(), audio=self._wav(bytes(self.pending)),
                                 language=self.language, prompt=self.prompt)
        segments = [e for e in self.state.gateway.media(self.uid, message, (ipc.Transcribed,))
                    if isinstance(e, ipc.TranscriptSegment)]
        settled = segments if final else [s for s in segments[:-1] if s.end <= heard_s - self.settle_s]
        events = []
        for segment in settled:
            delta = piece(self.text, segment.text)
            if delta:
                self.text += delta
                events.append({"type": "transcript.text.delta", "delta": delta})
        if settled:
            kept_from = len(self.pending) if final else int(settled[-1].end * self.sample_rate) * SAMPLE_BYTES
            del self.pending[:kept_from]
            self.decoded_bytes = max(0, self.decoded_bytes - kept_from)
        return events

    def _wav(self, pcm: bytes) -> bytes:
        """The PCM with a WAV header (the model process decodes files)."""
        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(SAMPLE_BYTES)
            wav.setframerate(self.sample_rate)
            wav.writeframes(pcm)
        return out.getvalue()
