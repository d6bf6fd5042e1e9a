"""Speech recognition with transformers' Whisper: `openai/whisper-*` folders (config.json, safetensors or .bin).

Audio is cut into Whisper's 30-second windows; each window is one segment, decoded with transformers'
own `generate` (greedy unless the launch sets `num_beams`). faster-whisper (engines/whisper_engine.py)
serves CTranslate2 folders and is tried first under `auto`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.facts import TRANSFORMERS_WHISPER
from berth_server.engines.media import SpeechRecognizer, TranscribeOptions
from berth_server.errors import InvalidRequest
from berth_server.ipc import TranscriptSegment

SAMPLE_RATE = 16000
WINDOW_S = 30


class TransformersWhisperEngine(SpeechRecognizer):
    """WhisperForConditionalGeneration with its WhisperProcessor; one window after another."""

    facts = TRANSFORMERS_WHISPER
    abilities = frozenset({"audio2text"})
    weight_format = "transformers Whisper folder (config.json with model_type whisper)"

    model: Any = None
    processor: Any = None

    @classmethod
    def cannot_read(cls, model_dir: Path) -> str | None:
        """A transformers checkpoint whose config.json says model_type "whisper"."""
        config = model_dir / "config.json"
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return f"{model_dir} has no readable config.json"
        if model_type != "whisper":
            return f"{model_dir} holds a {model_type!r} model, not a transformers Whisper one"
        if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
            return f"{model_dir} holds no safetensors or .bin weights"
        return None

    def load(self) -> EngineLoadInfo:
        """Load the model and its processor on the settings' device."""
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        wanted = self.settings.device
        device = "cuda" if wanted in ("auto", "") and torch.cuda.is_available() else wanted
        device = "cpu" if device in ("auto", "") else device
        self.processor = WhisperProcessor.from_pretrained(str(self.model_dir))
        model: Any = WhisperForConditionalGeneration.from_pretrained(str(self.model_dir))
        self.model = model.to(device).eval()
        self.device = device
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        self.num_beams = int(self.options.get("num_beams") or 1)
        return EngineLoadInfo(engine=self.name, device=device, dtype=str(self.model.dtype).removeprefix("torch."),
                              max_model_len=int(self.model.config.max_target_positions), max_batch_size=1,
                              extra={"multilingual": self.multilingual})

    def describe(self) -> dict[str, Any]:
        """Whether the model knows languages other than English, and its beam count."""
        return {"multilingual": self.multilingual, "num_beams": self.num_beams, "sample_rate": SAMPLE_RATE}

    def transcribe(self, audio: Any, options: TranscribeOptions) -> tuple[Iterator[TranscriptSegment], dict[str, Any]]:
        """One segment per 30-second window, decoded by transformers' generate."""
        if not self.multilingual and (options.task == "translate" or options.language not in (None, "en")):
            raise InvalidRequest(f"model '{self.config.uid}' is English-only: it transcribes English only",
                                 param="language" if options.task != "translate" else "model")
        kwargs: dict[str, Any] = {"num_beams": self.num_beams}
        if self.multilingual:
            kwargs["task"] = options.task
            if options.language:
                kwargs["language"] = options.language
        if options.temperature:
            kwargs.update(do_sample=True, temperature=options.temperature)
        if options.prompt:
            kwargs["prompt_ids"] = self.processor.get_prompt_ids(options.prompt, return_tensors="pt").to(self.device)
        duration = len(audio) / SAMPLE_RATE
        heard = {"language": options.language or "en", "duration": duration}
        return self._windows(audio, duration, kwargs), heard

    def _windows(self, audio: Any, duration: float, kwargs: dict[str, Any]) -> Iterator[TranscriptSegment]:
        import torch

        step = WINDOW_S * SAMPLE_RATE
        for start in range(0, len(audio), step):
            window = audio[start:start + step]
            features = self.processor.feature_extractor(window, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.inference_mode():
                tokens = self.model.generate(features.input_features.to(self.device, self.model.dtype), **kwargs)
            text = self.processor.batch_decode(tokens, skip_special_tokens=True)[0]
            yield TranscriptSegment(start=start / SAMPLE_RATE, end=min((start + step) / SAMPLE_RATE, duration), text=text,
                          tokens=[int(t) for t in tokens[0]])

    def close(self) -> None:
        """Drop the model."""
        self.model = None
