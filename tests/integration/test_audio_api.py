"""OpenAI's and Xinference's audio APIs on real weights: Whisper tiny.en (faster-whisper) and Piper's joe voice.

One server for the module: Whisper is the default model (demo://whisper-tiny-en); the Piper voice is
registered and launched through Xinference's own client, with noise at 0 so its speech is exact.
The speech the recognizer hears is made here, by Piper, from known sentences.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import RunningServer, launch_serve
from tests.integration.test_web_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DESKTOP, _open

SENTENCE = "The quick brown fox jumps over the lazy dog."
WORDS = ("quick", "brown", "fox", "jumps", "lazy", "dog")
UPLOAD_LIMIT = 1_500_000  # BERTH_MAX_AUDIO_BYTES for this server
SECONDS_LIMIT = 20  # BERTH_MAX_AUDIO_SECONDS
PIPER_REGISTRATION = {
    "version": 2, "model_name": "piper-joe", "model_family": "piper", "model_ability": ["text2audio"],
    "model_uri": "demo://piper-joe", "multilingual": False,
    "default_model_config": {"noise_scale": 0, "noise_w_scale": 0},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Any, Any]]:
    """The server, and (loaded while it starts) Piper's joe voice and faster-whisper's model, the references.

    Whisper tiny.en is the default model ("whisper"); Piper's joe is launched as "joe" with Xinference's client.
    """
    from berth_server.models.wheel_weights import piper_joe_dir, whisper_tiny_en_dir
    from faster_whisper import WhisperModel
    from piper import PiperVoice
    from xinference_client import RESTfulClient

    running = launch_serve("demo://whisper-tiny-en", tmp_path_factory.mktemp("audio"), wait=False, env={
        "BERTH_MODEL_UID": "whisper", "BERTH_MAX_AUDIO_BYTES": str(UPLOAD_LIMIT),
        "BERTH_MAX_AUDIO_SECONDS": str(SECONDS_LIMIT)})
    try:
        voice = PiperVoice.load(piper_joe_dir() / "en_US-joe-medium.onnx")
        # The server's settings for the same model: int8 on the CPU.
        recognizer = WhisperModel(str(whisper_tiny_en_dir()), device="cpu", compute_type="int8")
        running.wait_ready()
        client = RESTfulClient(running.base_url)
        client.register_model(model_type="audio", model=json.dumps(PIPER_REGISTRATION), persist=False)
        assert client.launch_model(model_name="piper-joe", model_type="audio", model_uid="joe") == "joe"
        yield running, voice, recognizer
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(served: tuple[RunningServer, Any, Any]) -> RunningServer:
    return served[0]


@pytest.fixture(scope="module")
def voice() -> Any:
    """Piper's own joe voice, loaded here (the reference for the server's speech)."""
    from berth_server.models.wheel_weights import piper_joe_dir
    from piper import PiperVoice

    return PiperVoice.load(piper_joe_dir() / "en_US-joe-medium.onnx")


def piper_wav(voice: Any, text: str) -> bytes:
    """Piper's own WAV of `text` with noise at 0 (its synthesize_wav, as its CLI writes files)."""
    from piper import SynthesisConfig

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        voice.synthesize_wav(text, wav, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0))
    return out.getvalue()


@pytest.fixture(scope="module")
def speech(voice: Any) -> bytes:
    """The test sentence, spoken by Piper."""
    return piper_wav(voice, SENTENCE)


def transcode(wav: bytes, container: str, codec: str, rate: int) -> bytes:
    """The WAV re-encoded with PyAV (FFmpeg) as `container`/`codec` at `rate` Hz."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as source, av.open(out, "w", format=container) as target:
        stream: Any = target.add_stream(codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for frame in source.decode(audio=0):
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    target.mux(packet)
        for packet in stream.encode(None):
            target.mux(packet)
    return out.getvalue()


def pcm_of(data: bytes) -> tuple[int, bytes]:
    """(sample rate, 16-bit frames) of a WAV file."""
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.readframes(wav.getnframes())


def openai_client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)


def test_openai_client_transcribes_speech_exactly_as_faster_whisper_does(server: RunningServer, speech: bytes) -> None:
    from berth_server.models.wheel_weights import whisper_tiny_en_dir
    from faster_whisper import WhisperModel

    text = openai_client(server).audio.transcriptions.create(model="whisper", file=("speech.wav", speech)).text
    assert all(word in text.lower() for word in WORDS), text
    # The same call, made directly: the server's settings (int8 on the CPU, beam 5, the temperature ladder).
    model = WhisperModel(str(whisper_tiny_en_dir()), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(io.BytesIO(speech), beam_size=5, temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert text == "".join(segment.text for segment in segments).strip()


def test_streamed_deltas_join_to_the_whole_text(server: RunningServer, voice: Any) -> None:
    two_sentences = piper_wav(voice, "Good morning. We will go to the beach.")
    client = openai_client(server)
    whole = client.audio.transcriptions.create(model="whisper", file=("a.wav", two_sentences)).text
    events = list(client.audio.transcriptions.create(model="whisper", file=("a.wav", two_sentences), stream=True))
    deltas = [event.delta for event in events if event.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done"
    assert "".join(deltas) == events[-1].text == whole
    assert "beach" in whole.lower()


def test_response_formats(server: RunningServer, speech: bytes) -> None:
    def ask(**fields: Any) -> httpx.Response:
        reply = httpx.post(server.url("/v1/audio/transcriptions"), files={"file": ("s.wav", speech)},
                           data={"model": "whisper", **fields}, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply

    verbose = ask(response_format="verbose_json", **{"timestamp_granularities[]": ["word", "segment"]}).json()
    assert verbose["usage"] == {"type": "duration", "seconds": 3}
    assert ask(response_format="text").text == verbose["text"] + "\n"
    srt = ask(response_format="srt").text
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and "lazy dog" in srt
    vtt = ask(response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.headers["content-type"].startswith("text/vtt")
    assert verbose["language"] == "en" and verbose["task"] == "transcribe" and "lazy dog" in verbose["text"]
    assert 2.0 < verbose["duration"] < 3.0 and verbose["segments"][0]["start"] == 0.0
    assert [w["word"].strip(" .").lower() for w in verbose["words"]][-2:] == ["lazy", "dog"]


@pytest.mark.parametrize(("container", "codec", "rate"), [
    ("flac", "flac", 22050), ("mp3", "libmp3lame", 22050), ("ogg", "libopus", 48000), ("webm", "libopus", 48000)])
def test_decodes_flac_mp3_ogg_and_webm(server: RunningServer, speech: bytes, container: str, codec: str,
                                       rate: int) -> None:
    encoded = transcode(speech, container, codec, rate)
    reply = httpx.post(server.url("/v1/audio/transcriptions"), files={"file": (f"s.{container}", encoded)},
                       data={"model": "whisper"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert all(word in reply.json()["text"].lower() for word in WORDS), reply.text


def test_speech_is_pipers_own_wav_at_the_voices_rate(server: RunningServer, voice: Any) -> None:
    text = "Berth reads this sentence aloud."
    wav = openai_client(server).audio.speech.create(model="joe", voice="joe", input=text, response_format="wav")
    assert wav.content == piper_wav(voice, text)
    assert pcm_of(wav.content)[0] == voice.config.sample_rate == 22050


def test_speech_formats_and_streams_carry_the_same_samples(server: RunningServer, voice: Any) -> None:
    import av
    import numpy as np
    from berth_server.engines.audio_codec import streaming_wav_header

    text = "One sentence. And another one."
    rate, pcm = pcm_of(piper_wav(voice, text))

    def speak(**fields: Any) -> httpx.Response:
        reply = httpx.post(server.url("/v1/audio/speech"), json={"model": "joe", "input": text, **fields}, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply

    assert speak(response_format="pcm").content == pcm
    flac = speak(response_format="flac")
    with av.open(io.BytesIO(flac.content)) as decoded:  # lossless: the same samples back
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in decoded.decode(audio=0)])
    assert samples.astype("<i2").tobytes() == pcm
    mp3 = speak(response_format="mp3")
    assert mp3.headers["content-type"] == "audio/mpeg" and mp3.content[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
    assert speak(response_format="wav", stream_format="audio").content == streaming_wav_header(rate) + pcm
    events = [json.loads(line[6:]) for line in speak(response_format="pcm", stream_format="sse").text.splitlines()
              if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    assert len(events) >= 3  # a delta a sentence
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == pcm


def test_round_trip_speech_to_text(server: RunningServer) -> None:
    client = openai_client(server)
    spoken = client.audio.speech.create(model="joe", voice="joe", input="Please open the red door.",
                                        response_format="wav")
    text = client.audio.transcriptions.create(model="whisper", file=("r.wav", spoken.content)).text
    assert all(word in text.lower() for word in ("open", "red", "door")), text


def test_xinference_client_and_model_descriptions(server: RunningServer, speech: bytes) -> None:
    from xinference_client import RESTfulClient

    client = RESTfulClient(server.base_url)
    assert client.get_model("whisper").transcriptions(speech)["text"].lower().startswith("the quick brown fox")
    spoken = client.get_model("joe").speech("Hello there.", response_format="wav")  # voice "": the first voice
    assert pcm_of(spoken)[0] == 22050
    joe = httpx.get(server.url("/v1/models/joe"), timeout=10).json()
    assert (joe["model_type"], joe["model_family"], joe["model_ability"], joe["voices"]) == (
        "audio", "piper", ["text2audio"], ["joe"])
    whisper = client.describe_model("whisper")
    assert (whisper["model_type"], whisper["model_family"], whisper["multilingual"]) == ("audio", "whisper", False)
    voices = httpx.get(server.url("/v1/audio/voices"), timeout=10).json()["voices"]
    assert voices == [{"id": "joe", "name": "joe", "model": "joe", "language": "en-us"}]
    unserved = {**PIPER_REGISTRATION, "model_name": "chattts", "model_family": "ChatTTS", "model_uri": None,
                "model_id": "2Noise/ChatTTS"}
    client.register_model(model_type="audio", model=json.dumps(unserved), persist=False)
    with pytest.raises(RuntimeError, match="cannot serve the audio model_family 'ChatTTS'"):
        client.launch_model(model_name="chattts", model_type="audio")


def test_invocations_with_an_audio_content_type_transcribes(server: RunningServer, speech: bytes) -> None:
    reply = httpx.post(server.url("/invocations"), content=speech, headers={"Content-Type": "audio/wav"}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert "lazy dog" in reply.json()["text"]


def test_refusals_are_4xx_naming_the_limit(server: RunningServer, speech: bytes, tmp_path: Path) -> None:
    def transcribe(data: bytes, **fields: Any) -> httpx.Response:
        return httpx.post(server.url("/v1/audio/transcriptions"), files={"file": ("f", data)},
                          data={"model": "whisper", **fields}, timeout=60)

    not_audio = transcribe(b"%PDF-1.4 this is not audio at all" * 10)
    assert not_audio.status_code == 400 and not_audio.json()["error"]["param"] == "file"
    assert transcribe(b"").status_code == 400
    oversized = transcribe(b"\0" * (UPLOAD_LIMIT + 1))
    assert oversized.status_code == 413 and "BERTH_MAX_AUDIO_BYTES" in oversized.json()["error"]["message"]
    silence = io.BytesIO()
    with wave.open(silence, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 8000 * (SECONDS_LIMIT + 1))
    too_long = transcribe(silence.getvalue())
    assert too_long.status_code == 400 and "BERTH_MAX_AUDIO_SECONDS" in too_long.json()["error"]["message"]
    assert transcribe(speech, language="fr").status_code == 400  # tiny.en is English-only
    assert httpx.post(server.url("/v1/audio/translations"), files={"file": ("f", speech)},
                      data={"model": "whisper"}, timeout=60).status_code == 400
    assert transcribe(speech, model="joe").status_code == 400  # a voice does not recognise speech

    def speak(**fields: Any) -> httpx.Response:
        return httpx.post(server.url("/v1/audio/speech"), json={"model": "joe", "input": "Hi.", **fields}, timeout=60)

    unknown = speak(voice="alloy")
    assert unknown.status_code == 400 and "joe" in unknown.json()["error"]["message"]
    assert speak(response_format="opus").status_code == 400  # no encoder path for it here
    assert speak(response_format="flac", stream_format="audio").status_code == 400  # streams pcm or wav only
    assert speak(model="whisper").status_code == 400
    assert speak(input="x" * 5000).status_code == 400  # BERTH_MAX_SPEECH_CHARS


def test_web_ui_transcribes_an_upload_and_speaks_text(server: RunningServer, speech: bytes) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        # A fake microphone (Chromium's beep), granted without asking, for the Record button.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            _try_out_audio(_open(browser, server.url("/ui"), DESKTOP), speech, expect)
        finally:
            browser.close()


def _try_out_audio(page: Any, speech: bytes, expect: Any) -> None:
    try:
        expect(page.get_by_role("combobox", name="Speech recognition model")).to_have_value("whisper")
        page.get_by_label("Audio file (wav, flac, mp3, ogg, webm)").set_input_files(
            {"name": "speech.wav", "mimeType": "audio/wav", "buffer": speech})
        page.get_by_role("button", name="Transcribe").click()
        expect(page.locator("#transcribe-result")).to_contain_text("lazy dog", timeout=60_000)
        expect(page.get_by_role("combobox", name="Voice model")).to_have_value("joe")
        page.get_by_role("textbox", name="Text to speak").fill("Hello from the web page.")
        page.get_by_role("button", name="Speak").click()
        audio = page.locator("#speak-audio")
        expect(audio).to_be_visible(timeout=60_000)
        size = page.evaluate("async () => (await (await fetch(document.getElementById('speak-audio').src)).blob()).size")
        assert size > 44  # a WAV header and samples
        # Record: the browser's own webm/opus recording is uploaded and decoded.
        page.get_by_label("Audio file (wav, flac, mp3, ogg, webm)").set_input_files([])
        page.get_by_role("button", name="Record").click()
        page.wait_for_timeout(1500)
        with page.expect_response("**/v1/audio/transcriptions") as recorded:
            page.get_by_role("button", name="Stop and transcribe").click()
        assert recorded.value.status == 200, recorded.value.text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "audio-try-out.png"))
        assert page.berth_errors == []  # type: ignore[attr-defined]
    finally:
        page.context.close()


def test_live_audio_over_the_bidirectional_stream(server: RunningServer, voice: Any) -> None:
    """SageMaker's bidirectional stream: PCM in binary frames, transcript deltas back while the audio is open."""
    import asyncio

    import websockets

    rate, pcm = 16000, b""
    for sentence in ("Good morning.", "We will go to the beach today.", "The weather is warm and sunny."):
        # a second of silence after each sentence: the pauses a speaker makes, where segments end
        pcm += pcm_of(transcode(piper_wav(voice, sentence), "wav", "pcm_s16le", rate))[1] + bytes(2 * rate)
    url = server.url("/invocations-bidirectional-stream").replace("http://", "ws://", 1)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"id": "mic", "audio": "start", "model": "joe"}))  # a voice cannot listen
            refused = json.loads(await asyncio.wait_for(ws.recv(), 60))
            await ws.send(json.dumps({"id": "mic", "audio": "start", "sample_rate": rate}))
            for start in range(0, len(pcm), rate // 2):  # half a second per frame, as a microphone sends
                await ws.send(pcm[start:start + rate // 2])
            early = [json.loads(await asyncio.wait_for(ws.recv(), 120))]  # before the audio ends
            await ws.send(json.dumps({"id": "mic", "audio": "end"}))
            frames = list(early)
            while not frames[-1].get("done"):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        return early, frames, refused

    early, frames, refused = asyncio.run(scenario())
    assert refused["id"] == "mic" and refused["status"] == 422 and "recognise speech" in json.dumps(refused)  # as /invocations
    assert early[0]["event"]["type"] == "transcript.text.delta"  # a segment was final while the audio was open
    events = [frame["event"] for frame in frames if "event" in frame]
    deltas = [event["delta"] for event in events if event["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done" and frames[-1] == {"id": "mic", "done": True, "status": 200}
    assert "".join(deltas) == events[-1]["text"]
    text = events[-1]["text"].lower()
    assert all(word in text for word in ("morning", "beach", "weather", "sunny")), text
