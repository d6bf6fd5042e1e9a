"""Berth's SDK: deploy the serving container, predict and stream, register custom models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["BerthError", "Predictor", "deploy", "register_model"]

# Loaded on first use so `import berth` stays fast (boto3 and httpx load only when needed).
_LAZY = {
    "deploy": ("berth.deployment", "deploy"),
    "register_model": ("berth.register", "register_model"),
    "Predictor": ("berth.predictor", "Predictor"),
    "BerthError": ("berth.errors", "BerthError"),
}


def __getattr__(name: str) -> Any:
    """Resolve the public names lazily."""
    if name not in _LAZY:
        raise AttributeError(f"module 'berth' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
