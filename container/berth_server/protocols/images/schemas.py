"""OpenAI's image-generation request, with Xinference's `kwargs` (seed, steps, negative prompt) as fields too."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from berth_server.protocols.wire import parse

__all__ = ["ImageRequest", "parse"]
_SIZE = re.compile(r"^(\d{1,5})[x*](\d{1,5})$")
# Xinference's kwargs keys that map onto fields; others are refused by name.
_KWARGS = ("seed", "num_inference_steps", "negative_prompt", "guidance_scale")


class ImageRequest(BaseModel):
    """POST /v1/images/generations."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = None
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1)
    size: str = "512x512"
    response_format: Literal["b64_json", "url"] = "b64_json"
    seed: int | None = Field(None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(None, ge=1)
    negative_prompt: str | None = Field(None, max_length=4000)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    # OpenAI fields that ask for nothing a diffusers pipeline varies.
    quality: Literal["standard", "auto"] | None = None
    style: Literal["natural", "vivid"] | None = None
    user: str | None = None
    kwargs: dict[str, Any] = {}

    @field_validator("kwargs", mode="before")
    @classmethod
    def _kwargs(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError("kwargs must be a JSON object") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("kwargs must be a JSON object")  # noqa: TRY004 - pydantic reports ValueErrors
        unknown = sorted(set(value) - set(_KWARGS))
        if unknown:
            raise ValueError(f"kwargs {', '.join(unknown)} not supported; use {', '.join(_KWARGS)}")
        return value

    @model_validator(mode="after")
    def _merge_kwargs(self) -> ImageRequest:
        for key, value in self.kwargs.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self

    def dimensions(self) -> tuple[int, int]:
        """(width, height) from "WxH" (OpenAI) or "W*H" (Xinference)."""
        match = _SIZE.match(self.size)
        if match is None:
            raise ValueError(f"size {self.size!r}: use WIDTHxHEIGHT, e.g. 512x512")
        return int(match.group(1)), int(match.group(2))
