"""The torch-backed audio and image engines on tiny random models made here: diffusers and transformers' Whisper.

The server serves a Stable Diffusion pipeline folder as its default model (a diffusers folder is an
image model): its images for a seed are diffusers' own for that seed, pixel for pixel. A transformers
Whisper folder, launched through Xinference's client, transcribes exactly as transformers' generate.
One server for both: torch is loaded once in the test process for the references.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from xinference_client import RESTfulClient

from tests.integration.conftest import MODEL_CACHE, RunningServer, launch_serve
from tests.integration.test_web_ui import CHROMIUM, CHROMIUM_ARGS, DESKTOP, _open
from tests.integration.tiny_diffusion import build_tiny_pipeline
from tests.integration.tiny_whisper import build_tiny_whisper

MAX_STEPS = 3


@pytest.fixture(scope="module")
def pipeline_dir() -> Path:
    return build_tiny_pipeline(MODEL_CACHE / "tiny-stable-diffusion")


PROMPT, SEED, STEPS, SIZE = "a red bicycle", 7, 2, 32
HF_WHISPER = {"version": 2, "model_name": "hf-whisper", "model_family": "whisper", "model_ability": ["audio2text"],
              "model_id": "openai/whisper-tiny.en"}  # the launch's model_path gives the weights


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
        whisper_dir = build_tiny_whisper(MODEL_CACHE / "tiny-whisper")
        running.wait_ready()
        # The Whisper folder loads while the image tests run.
        client = RESTfulClient(running.base_url)
        client.register_model(model_type="audio", model=json.dumps(HF_WHISPER), persist=False)
        client.launch_model(model_name="hf-whisper", model_type="audio", model_uid="hf-whisper", wait_ready=False,
                            model_path=str(whisper_dir))
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


def tone_wav(seconds: float = 2.0, rate: int = 16000) -> bytes:
    """A WAV of a 440 Hz tone (the random Whisper transcribes anything into nonsense; this is its input)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(rate)
        wav.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                                 for i in range(int(seconds * rate))))
    return out.getvalue()


def test_a_transformers_whisper_folder_transcribes_as_transformers_generate_does(server: RunningServer) -> None:
    import torch
    from faster_whisper.audio import decode_audio
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    deadline = time.monotonic() + 120
    while (state := httpx.get(server.url("/v1/models/hf-whisper"), timeout=10).json()["state"]) != "ready":
        assert state not in ("failed", "stopped") and time.monotonic() < deadline, state
        time.sleep(0.5)
    assert httpx.get(server.url("/v1/models/hf-whisper"), timeout=10).json()["model_engine"] == "transformers-whisper"
    audio = tone_wav()
    reply = httpx.post(server.url("/v1/audio/transcriptions"), files={"file": ("tone.wav", audio)},
                       data={"model": "hf-whisper"}, timeout=60)
    assert reply.status_code == 200, reply.text
    folder = MODEL_CACHE / "tiny-whisper"
    processor = WhisperProcessor.from_pretrained(str(folder))
    model = WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
    features = processor.feature_extractor(decode_audio(io.BytesIO(audio), sampling_rate=16000),
                                           sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        expected = processor.batch_decode(model.generate(features, num_beams=1), skip_special_tokens=True)[0]
    assert reply.json()["text"] == expected.strip() != ""


def test_web_ui_generates_an_image(server: RunningServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _open(browser, server.url("/ui"), DESKTOP)
            expect(page.get_by_role("combobox", name="Image model")).to_have_value("sd")
            page.get_by_role("textbox", name="Prompt").fill("a green field")
            page.get_by_role("textbox", name="Size (width x height)").fill("32x32")
            page.get_by_role("spinbutton", name="Steps (empty: the model's default)").fill("1")
            page.get_by_role("button", name="Generate").click()
            image = page.get_by_role("img", name="The generated image")
            expect(image).to_be_visible(timeout=60_000)
            assert image.get_attribute("src").startswith("data:image/png;base64,")  # type: ignore[union-attr]
            assert page.evaluate("document.getElementById('image-result').naturalWidth") == 32
            assert page.berth_errors == []  # type: ignore[attr-defined]
        finally:
            browser.close()
