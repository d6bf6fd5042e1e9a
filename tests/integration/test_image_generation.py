"""OpenAI's and Xinference's image generation on a tiny random Stable Diffusion pipeline made here.

The server serves the pipeline folder as its default model (a diffusers folder is an image model);
its images for a seed are diffusers' own for that seed, pixel for pixel.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import MODEL_CACHE, RunningServer, launch_serve
from tests.integration.tiny_diffusion import build_tiny_pipeline

MAX_STEPS = 3


@pytest.fixture(scope="module")
def pipeline_dir() -> Path:
    return build_tiny_pipeline(MODEL_CACHE / "tiny-stable-diffusion")


PROMPT, SEED, STEPS, SIZE = "a red bicycle", 7, 2, 32


def diffusers_images(pipeline_dir: Path) -> list[bytes]:
    """diffusers' own two images (RGB bytes) for PROMPT at SEED: the reference."""
    import torch
    from diffusers import DiffusionPipeline

    reference = DiffusionPipeline.from_pretrained(str(pipeline_dir))
    reference.set_progress_bar_config(disable=True)
    images = reference(PROMPT, num_images_per_prompt=2, width=SIZE, height=SIZE, num_inference_steps=STEPS,
                       generator=torch.Generator("cpu").manual_seed(SEED)).images
    return [image.convert("RGB").tobytes() for image in images]


@pytest.fixture(scope="module")
def served(pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, list[bytes]]]:
    """The server on the pipeline (uid "sd"), and diffusers' reference images, made while the server starts."""
    running = launch_serve(pipeline_dir, tmp_path_factory.mktemp("image"), wait=False, env={
        "BERTH_MODEL_UID": "sd", "BERTH_MAX_IMAGE_STEPS": str(MAX_STEPS), "BERTH_MAX_IMAGE_PIXELS": str(128 * 128)})
    try:
        reference = diffusers_images(pipeline_dir)
        running.wait_ready()
        yield running, reference
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(served: tuple[RunningServer, list[bytes]]) -> RunningServer:
    return served[0]


def pixels(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.convert("RGB").tobytes()


def test_images_equal_diffusers_own_for_the_seed(served: tuple[RunningServer, list[bytes]]) -> None:
    server, expected = served
    client = OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
    reply = client.images.generate(model="sd", prompt=PROMPT, n=2, size=f"{SIZE}x{SIZE}",  # type: ignore[arg-type]
                                   response_format="b64_json", extra_body={"seed": SEED, "num_inference_steps": STEPS})
    images = [pixels(base64.b64decode(image.b64_json or "")) for image in reply.data or []]
    assert images == expected
    assert images[0] != images[1]


def test_xinference_client_text_to_image(server: RunningServer) -> None:
    from xinference_client import RESTfulClient

    client = RESTfulClient(server.base_url)
    assert client.describe_model("sd")["model_type"] == "image"
    model = client.get_model("sd")
    reply = model.text_to_image("a blue house", size="32*32", response_format="b64_json", seed=1,
                                num_inference_steps=1)  # Xinference's client sends these two as its kwargs
    assert len(reply["data"]) == 1 and len(pixels(base64.b64decode(reply["data"][0]["b64_json"]))) == 32 * 32 * 3


def test_limits_are_400s_naming_them(server: RunningServer) -> None:
    def generate(**fields: object) -> httpx.Response:
        return httpx.post(server.url("/v1/images/generations"),
                          json={"model": "sd", "prompt": "x", "size": "64x64", **fields}, timeout=60)

    too_many_steps = generate(num_inference_steps=MAX_STEPS + 1)
    assert too_many_steps.status_code == 400 and "BERTH_MAX_IMAGE_STEPS" in too_many_steps.json()["error"]["message"]
    too_big = generate(size="256x256")
    assert too_big.status_code == 400 and "BERTH_MAX_IMAGE_PIXELS" in too_big.json()["error"]["message"]
    assert generate(size="60x60").status_code == 400  # not a multiple of 8
    assert generate(size="big").status_code == 400
    assert generate(response_format="url").status_code == 400
    assert generate(n=11).status_code == 400  # BERTH_MAX_IMAGES
