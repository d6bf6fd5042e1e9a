"""OpenAI's image generation over an image model: b64_json PNGs, the same images for the same seed."""

from __future__ import annotations

import base64
import time
from typing import Any

from berth_server import ipc
from berth_server.client.streams import new_request_id
from berth_server.errors import InvalidRequest
from berth_server.protocols.images.schemas import ImageRequest
from berth_server.protocols.media import media_model

# Pipelines work in latent blocks of 8 pixels (stable diffusion's VAE halves the size three times).
SIZE_MULTIPLE = 8


def generations(state: Any, body: ImageRequest) -> dict[str, Any]:
    """Generate n images for the prompt; limits (size, steps, n) are 400s that name the setting."""
    settings = state.settings
    if body.response_format == "url":
        raise InvalidRequest("response_format 'url' is not supported: this server keeps no files; use b64_json",
                             param="response_format")
    try:
        width, height = body.dimensions()
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="size") from None
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width < SIZE_MULTIPLE or height < SIZE_MULTIPLE:
        raise InvalidRequest(f"size {body.size}: width and height must be positive multiples of {SIZE_MULTIPLE}",
                             param="size")
    if width * height > settings.max_image_pixels:
        raise InvalidRequest(f"size {body.size} is {width * height} pixels, over the {settings.max_image_pixels}-"
                             "pixel limit (BERTH_MAX_IMAGE_PIXELS)", param="size")
    if body.num_inference_steps is not None and body.num_inference_steps > settings.max_image_steps:
        raise InvalidRequest(f"num_inference_steps {body.num_inference_steps} is over the limit of "
                             f"{settings.max_image_steps} (BERTH_MAX_IMAGE_STEPS)", param="num_inference_steps")
    if body.n > settings.max_images:
        raise InvalidRequest(f"n {body.n} is over the limit of {settings.max_images} (BERTH_MAX_IMAGES)", param="n")
    uid, _ = media_model(state, body.model, "text2image", "generate images")
    message = ipc.MakeImages(request_id=new_request_id(), prompt=body.prompt, n=body.n, width=width, height=height,
                             steps=body.num_inference_steps, seed=body.seed, negative_prompt=body.negative_prompt,
                             guidance_scale=body.guidance_scale)
    images: list[bytes] = []
    for event in state.gateway.media(uid, message, (ipc.Images,)):
        images = event.images
    return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png).decode()} for png in images]}
