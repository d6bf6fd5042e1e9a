"""Image generation with diffusers: a pipeline folder (model_index.json) such as a stable_diffusion one.

The pipeline is loaded with diffusers' own `DiffusionPipeline.from_pretrained`, so any text-to-image
pipeline it knows serves; a seed makes the images reproducible (a torch Generator seeded with it, on
the CPU, as diffusers' docs recommend for results that match across devices).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.facts import DIFFUSERS
from berth_server.engines.media import ImageGenerator
from berth_server.errors import InvalidRequest

DEFAULT_STEPS = 25


class DiffusersEngine(ImageGenerator):
    """A diffusers text-to-image pipeline; one request at a time, its n images in one batch."""

    facts = DIFFUSERS
    abilities = frozenset({"text2image"})
    weight_format = "diffusers pipeline folder (model_index.json)"

    pipeline: Any = None

    @classmethod
    def cannot_read(cls, model_dir: Path) -> str | None:
        """A diffusers pipeline folder has model_index.json."""
        if not (model_dir / "model_index.json").is_file():
            return f"{model_dir} is not a diffusers pipeline folder (no model_index.json)"
        return None

    def load(self) -> EngineLoadInfo:
        """Load the pipeline on the settings' device (a GPU when there is one)."""
        import torch
        from diffusers import DiffusionPipeline

        wanted = self.settings.device
        device = "cuda" if wanted in ("auto", "") and torch.cuda.is_available() else wanted
        device = "cpu" if device in ("auto", "") else device
        dtype_name = str(self.options.get("torch_dtype") or ("float16" if device.startswith("cuda") else "float32"))
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidRequest(f"torch_dtype {dtype_name!r} is not a torch dtype", param="torch_dtype")
        self.pipeline = DiffusionPipeline.from_pretrained(str(self.model_dir), torch_dtype=dtype).to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.device = device
        return EngineLoadInfo(engine=self.name, device=device, dtype=dtype_name, max_model_len=0,
                              max_batch_size=1, extra={})

    def describe(self) -> dict[str, Any]:
        """The pipeline class and its default step count."""
        return {"pipeline": type(self.pipeline).__name__, "num_inference_steps": self._steps(None)}

    def _steps(self, steps: int | None) -> int:
        return int(steps or self.options.get("num_inference_steps") or DEFAULT_STEPS)

    def generate(self, prompt: str, *, n: int, width: int, height: int, steps: int | None, seed: int | None,
                 negative_prompt: str | None, guidance_scale: float | None) -> list[bytes]:
        """n PNGs from one pipeline call (num_images_per_prompt), seeded when a seed is given."""
        import torch

        kwargs: dict[str, Any] = {"num_inference_steps": self._steps(steps), "num_images_per_prompt": n,
                                  "width": width, "height": height, "output_type": "pil"}
        scale = guidance_scale if guidance_scale is not None else self.options.get("guidance_scale")
        if scale is not None:
            kwargs["guidance_scale"] = float(scale)
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        if seed is not None:
            kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            images = self.pipeline(prompt, **kwargs).images
        return [_png(image) for image in images]

    def close(self) -> None:
        """Drop the pipeline (and its GPU memory)."""
        self.pipeline = None


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
