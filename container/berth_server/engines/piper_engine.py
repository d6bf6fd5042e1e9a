"""Speech synthesis with Piper: a VITS voice exported to ONNX (VOICE.onnx with VOICE.onnx.json), on onnxruntime.

piper-tts is GPL-3.0-or-later; it is the optional `audio` extra, imported only here, in the model process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.facts import PIPER
from berth_server.engines.media import SpeechSynthesizer
from berth_server.errors import InvalidRequest


def voice_files(model_dir: Path) -> list[Path]:
    """The .onnx voices in a folder (each with its .onnx.json), or the file itself."""
    if model_dir.is_file():
        return [model_dir] if model_dir.suffix == ".onnx" else []
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.glob("*.onnx") if p.with_name(p.name + ".json").is_file())


class PiperEngine(SpeechSynthesizer):
    """One Piper voice (its speakers, for a multi-speaker voice); a sentence at a time, so speech can stream."""

    facts = PIPER
    abilities = frozenset({"text2audio"})
    weight_format = "Piper ONNX voice (VOICE.onnx and VOICE.onnx.json)"

    voice: Any = None

    @classmethod
    def cannot_read(cls, model_dir: Path) -> str | None:
        """Exactly one voice: an .onnx file with its .onnx.json config."""
        found = voice_files(model_dir)
        if len(found) != 1:
            return f"{model_dir} holds {len(found)} Piper voices (VOICE.onnx with VOICE.onnx.json); it needs one"
        return None

    def load(self) -> EngineLoadInfo:
        """Load the voice; its config gives the sample rate, speakers and default noise."""
        from piper import PiperVoice

        path = voice_files(self.model_dir)[0]
        use_cuda = self.settings.device.startswith("cuda")
        self.voice = PiperVoice.load(path, use_cuda=use_cuda)
        config = json.loads(path.with_name(path.name + ".json").read_text())
        self.sample_rate = int(self.voice.config.sample_rate)
        speakers = dict(self.voice.config.speaker_id_map or {})
        # A single-speaker voice answers to its dataset's name ("joe") and to the file's ("en_US-joe-medium").
        self.speakers: dict[str, int | None] = {name: sid for name, sid in speakers.items()} or {
            str(config.get("dataset") or path.stem): None}
        self.aliases = {path.name.removesuffix(".onnx"): next(iter(self.speakers))}
        inference = config.get("inference", {})
        self.noise_scale = float(self.options.get("noise_scale", inference.get("noise_scale", 0.667)))
        self.noise_w_scale = float(self.options.get("noise_w_scale", inference.get("noise_w", 0.8)))
        self.length_scale = float(self.options.get("length_scale", inference.get("length_scale", 1.0)))
        return EngineLoadInfo(engine=self.name, device="cuda" if use_cuda else "cpu", dtype="float32",
                              max_model_len=0, max_batch_size=1, extra={})

    def describe(self) -> dict[str, Any]:
        """Voices, sample rate and the synthesis settings in force."""
        return {"voices": list(self.speakers), "sample_rate": self.sample_rate, "noise_scale": self.noise_scale,
                "noise_w_scale": self.noise_w_scale, "length_scale": self.length_scale,
                "language": self.voice.config.espeak_voice}

    def speaker(self, voice: str) -> int | None:
        """The speaker id of a voice name ("" is the first voice); InvalidRequest lists the voices."""
        name = self.aliases.get(voice, voice) or next(iter(self.speakers))
        if name not in self.speakers:
            raise InvalidRequest(f"voice {voice!r} is not one of model '{self.config.uid}''s voices: "
                                 f"{', '.join(self.speakers)}", param="voice")
        return self.speakers[name]

    def synthesize(self, text: str, voice: str, speed: float) -> Iterator[bytes]:
        """16-bit PCM, one chunk per sentence; speed divides the voice's length scale."""
        from piper import SynthesisConfig

        config = SynthesisConfig(speaker_id=self.speaker(voice), length_scale=self.length_scale / speed,
                                 noise_scale=self.noise_scale, noise_w_scale=self.noise_w_scale)
        return (chunk.audio_int16_bytes for chunk in self.voice.synthesize(text, config))
