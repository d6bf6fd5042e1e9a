"""Speech recognition with faster-whisper: Whisper models in CTranslate2's format (a folder with model.bin)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.facts import FASTER_WHISPER
from berth_server.engines.media import SpeechRecognizer, TranscribeOptions
from berth_server.errors import InvalidRequest
from berth_server.ipc import TranscriptSegment

log = logging.getLogger(__name__)
DEFAULT_BEAM_SIZE = 5


class FasterWhisperEngine(SpeechRecognizer):
    """faster-whisper's WhisperModel on the CPU (int8) or a GPU (float16); one request decodes at a time."""

    facts = FASTER_WHISPER
    abilities = frozenset({"audio2text"})
    weight_format = "CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)"

    model: Any = None
    multilingual: bool = False

    @classmethod
    def cannot_read(cls, model_dir: Path) -> str | None:
        """A CTranslate2 model has model.bin; a transformers Whisper folder (safetensors) is not one."""
        if not model_dir.is_dir() or not (model_dir / "model.bin").is_file():
            return (f"{model_dir} is not a CTranslate2 Whisper folder (no model.bin); transformers' Whisper "
                    "folders (openai/whisper-*) are the transformers-whisper engine's")
        return None

    def load(self) -> EngineLoadInfo:
        """Load the model with the launch's compute type and thread count."""
        from faster_whisper import WhisperModel

        wanted = self.settings.device
        device = "cpu" if wanted in ("auto", "", "cpu") else wanted
        if wanted in ("auto", "") and _cuda_available():
            device = "cuda"
        compute_type = str(self.options.get("compute_type") or ("float16" if device == "cuda" else "int8"))
        self.model = WhisperModel(str(self.model_dir), device=device, compute_type=compute_type,
                                  cpu_threads=int(self.options.get("cpu_threads") or 0))
        self.multilingual = bool(self.model.model.is_multilingual)
        self.beam_size = int(self.options.get("beam_size") or DEFAULT_BEAM_SIZE)
        return EngineLoadInfo(engine=self.name, device=device, dtype=compute_type, max_model_len=448,
                              max_batch_size=1, extra={"multilingual": self.multilingual})

    def describe(self) -> dict[str, Any]:
        """Whether the model knows languages other than English (tiny.en does not), and its beam size."""
        return {"multilingual": self.multilingual, "beam_size": self.beam_size, "sample_rate": 16000}

    def transcribe(self, audio: Any, options: TranscribeOptions) -> tuple[Iterator[TranscriptSegment], dict[str, Any]]:
        """faster-whisper's transcribe with OpenAI's fields; English-only models refuse other languages."""
        if not self.multilingual:
            if options.task == "translate":
                raise InvalidRequest(f"model '{self.config.uid}' is English-only: it cannot translate; "
                                     "launch a multilingual Whisper model", param="model")
            if options.language not in (None, "en"):
                raise InvalidRequest(f"model '{self.config.uid}' is English-only; language must be 'en', "
                                     f"not {options.language!r}", param="language")
        temperature: Any = options.temperature
        if temperature is None or temperature == 0:
            temperature = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # faster-whisper's (and OpenAI's) fallback ladder
        try:
            segments, info = self.model.transcribe(
                audio, task=options.task, language=options.language, initial_prompt=options.prompt or None,
                temperature=temperature, beam_size=self.beam_size, word_timestamps=options.word_timestamps)
        except ValueError as exc:  # an unknown language code
            raise InvalidRequest(f"cannot transcribe: {exc}", param="language") from None
        heard = {"language": info.language, "duration": float(info.duration)}
        return (_segment(s) for s in segments), heard


def _segment(segment: Any) -> TranscriptSegment:
    words = [{"word": w.word, "start": float(w.start), "end": float(w.end)} for w in (segment.words or [])]
    return TranscriptSegment(start=float(segment.start), end=float(segment.end), text=segment.text,
                   avg_logprob=float(segment.avg_logprob), compression_ratio=float(segment.compression_ratio),
                   no_speech_prob=float(segment.no_speech_prob), temperature=float(segment.temperature or 0.0),
                   tokens=list(segment.tokens), words=words)


def _cuda_available() -> bool:
    try:
        import ctranslate2
    except ImportError:
        return False
    return bool(ctranslate2.get_cuda_device_count())
