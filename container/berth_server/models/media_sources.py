"""What kind of audio or image model a source holds, told from its name or its files (no weights are read).

The default model (HF_MODEL_ID) has no registration saying its model type; these rules let
`HF_MODEL_ID=demo://whisper-tiny-en`, a CTranslate2 Whisper folder, a Piper voice or a diffusers
pipeline folder be served as what they are. Anything else stays an LLM.
"""

from __future__ import annotations

from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME
from berth_server.models.demo_sources import MEDIA_DEMOS, demo_name

MediaKind = tuple[str, str, tuple[str, ...]]  # (model_type, model_family, abilities)


def media_kind(source: str) -> MediaKind | None:
    """(model_type, model_family, abilities) for an audio or image source, or None for anything else."""
    if source.startswith(DEMO_SCHEME):
        return MEDIA_DEMOS.get(demo_name(source))
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_file() and path.suffix == ".onnx" and path.with_name(path.name + ".json").is_file():
        return ("audio", "piper", ("text2audio",))
    if not path.is_dir():
        return None
    if (path / "model_index.json").is_file():
        return ("image", "stable_diffusion", ("text2image",))
    if (path / "model.bin").is_file() and (path / "tokenizer.json").is_file():
        return ("audio", "whisper", ("audio2text",))
    if any(p.with_name(p.name + ".json").is_file() for p in path.glob("*.onnx")):
        return ("audio", "piper", ("text2audio",))
    return None
