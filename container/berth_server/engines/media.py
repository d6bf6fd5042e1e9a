"""The media engine interface (speech recognition, speech synthesis, image generation) and how one is chosen.

Audio and image models do not make tokens, so they do not go through the token engine interface
(engines/base.py); they share this one instead. Each engine's facts (name, package, model type,
families, launch keys) are in engines/facts.py; its class adds the abilities it serves and
`cannot_serve`, which says why it cannot serve a spec before anything loads. Engine classes are imported lazily: `import berth_server` needs none of their
libraries. The model process runs an engine's blocking calls off its event loop
(model_process/media_service.py).
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.facts import BY_NAME, MEDIA_ENGINES, EngineFacts
from berth_server.errors import InvalidRequest
from berth_server.ipc import TranscriptSegment
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)


class MediaEngineUnavailable(InvalidRequest):
    """No media engine can serve this model; the message says why for each."""


@dataclass(frozen=True)
class TranscribeOptions:
    """How to transcribe: OpenAI's fields, mapped onto the engine's."""

    task: str = "transcribe"  # or "translate" (into English)
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # None: the engine's fallback ladder
    word_timestamps: bool = False


class MediaEngine(abc.ABC):
    """A loaded audio or image model."""

    facts: ClassVar[EngineFacts]
    abilities: ClassVar[frozenset[str]] = frozenset()
    weight_format: ClassVar[str] = ""  # in words, for the reason an engine gives

    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings) -> None:
        self.model_dir = model_dir
        self.config = config
        self.settings = settings
        # A launch body's engine keys over the registration's default_model_config.
        self.options: dict[str, Any] = {**config.default_model_config, **config.engine_args}

    @property
    def name(self) -> str:
        """The engine's canonical name."""
        return self.facts.name

    @classmethod
    def cannot_serve(cls, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        """Why this engine cannot serve the model, or None when it can (checks type, ability, family, files)."""
        if config.model_type not in cls.facts.model_types:
            return f"it serves {', '.join(sorted(cls.facts.model_types))} models, not {config.model_type}"
        if config.abilities and not set(config.abilities) & cls.abilities:
            return f"it serves {', '.join(sorted(cls.abilities))}, not {', '.join(config.abilities)}"
        if config.model_family and config.model_family.lower() not in cls.facts.families:
            return f"it serves the {', '.join(sorted(cls.facts.families))} families, not {config.model_family!r}"
        return cls.cannot_read(model_dir)

    @classmethod
    def cannot_read(cls, model_dir: Path) -> str | None:
        """Why the files at model_dir are not this engine's weight format, or None."""
        return None

    @abc.abstractmethod
    def load(self) -> EngineLoadInfo:
        """Load the weights (blocking; the model process calls it in a worker thread)."""

    def describe(self) -> dict[str, Any]:
        """Facts the frontend shows and checks against (voices, sample rate, languages, limits)."""
        return {}

    def close(self) -> None:
        """Release what load() took."""


class SpeechRecognizer(MediaEngine):
    """Speech in, text out."""

    @abc.abstractmethod
    def transcribe(self, audio: Any, options: TranscribeOptions) -> tuple[Iterator[TranscriptSegment], dict[str, Any]]:
        """Recognise 16 kHz mono float32 samples: segments as they are decoded, and the detected language."""


class SpeechSynthesizer(MediaEngine):
    """Text in, speech out."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: str, speed: float) -> Iterator[bytes]:
        """16-bit little-endian mono PCM at describe()["sample_rate"], one chunk per sentence."""


class ImageGenerator(MediaEngine):
    """Text in, images out."""

    @abc.abstractmethod
    def generate(self, prompt: str, *, n: int, width: int, height: int, steps: int | None, seed: int | None,
                 negative_prompt: str | None, guidance_scale: float | None) -> list[bytes]:
        """n PNG images for the prompt (the same seed gives the same images)."""


def media_engine_class(name: str) -> type[MediaEngine]:
    """Import the media engine class called `name`."""
    module_name, class_name = BY_NAME[name].engine_class
    cls: type[MediaEngine] = getattr(importlib.import_module(module_name), class_name)
    return cls


def why_not(name: str, config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
    """Why media engine `name` cannot serve this model, or None."""
    facts = BY_NAME[name]
    if importlib.util.find_spec(facts.package) is None:
        return f"{facts.package} is not installed (pip install 'berth[{facts.extra}]')"
    return media_engine_class(name).cannot_serve(config, model_dir, settings)


def choose_media_engine(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str:
    """The engine named at launch, or the first that can serve the model; MediaEngineUnavailable says why not."""
    names = [facts.name for facts in MEDIA_ENGINES]
    if config.engine != "auto":
        if config.engine not in names:
            raise MediaEngineUnavailable(f"the {config.engine} engine does not serve {config.model_type} models; "
                                         f"use one of {', '.join(names)}")
        reason = why_not(config.engine, config, model_dir, settings)
        if reason:
            raise MediaEngineUnavailable(f"the {config.engine} engine cannot serve model "
                                         f"'{config.model_name}': {reason}")
        return config.engine
    reasons = []
    for name in names:
        reason = why_not(name, config, model_dir, settings)
        if reason is None:
            log.info("model %s: engine %s (auto)", config.uid, name)
            return name
        reasons.append(f"{name}: {reason}")
    raise MediaEngineUnavailable(f"no engine can serve {config.model_type} model '{config.model_name}': "
                                 f"{'; '.join(reasons)}")


def build_media_engine(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> MediaEngine:
    """Choose and build (not load) the media engine for an audio or image model."""
    cls: Any = media_engine_class(choose_media_engine(config, model_dir, settings))
    engine: MediaEngine = cls(model_dir, config, settings)
    return engine
