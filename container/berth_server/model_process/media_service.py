"""Audio and image models in their model process: one media engine, its blocking calls on one worker thread.

Requests run one at a time on that thread (faster-whisper, Piper and a diffusers pipeline each use every
core for one request; none batches requests of different lengths). What an engine makes as it goes
(transcript segments, sentences of speech) is sent at once, so replies can stream. Everything refused
(bad audio, a voice the model lacks, a format it cannot write) is raised before the first event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from berth_server import ipc
from berth_server.engines import audio_codec
from berth_server.engines.base import EngineLoadInfo
from berth_server.engines.media import (
    ImageGenerator,
    MediaEngine,
    SpeechRecognizer,
    SpeechSynthesizer,
    TranscribeOptions,
)
from berth_server.errors import InvalidRequest
from berth_server.settings import Settings

Emit = Callable[[Any], None]
_DONE = object()


class MediaService:
    """Serves Transcribe, Speak and MakeImages for one loaded media engine."""

    def __init__(self, engine: MediaEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="media")

    async def start(self) -> EngineLoadInfo:
        """Load the engine on its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.engine.load)

    def describe(self) -> dict[str, Any]:
        """The engine's facts, for the model's description."""
        return {"engine": self.engine.name, **self.engine.describe()}

    async def serve(self, message: ipc.MediaMessage, emit: Emit) -> None:
        """Answer one media request with its events (the last one ends it)."""
        work: Any = {ipc.Transcribe: self._transcribe, ipc.Speak: self._speak, ipc.MakeImages: self._images}[
            type(message)]
        if not isinstance(self.engine, _ENGINE_FOR[type(message)]):
            raise InvalidRequest(f"model '{self.engine.config.uid}' ({self.engine.name}) does not "
                                 f"{_VERB[type(message)]}", param="model")
        await self._run(lambda cancelled: work(message, cancelled), emit)

    async def _run(self, work: Callable[[threading.Event], Iterator[Any]], emit: Emit) -> None:
        """Run `work` on the engine's thread, emitting each event it yields as it yields it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for event in work(cancelled):
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, which raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
                return
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        future = loop.run_in_executor(self._pool, produce)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                emit(item)
        finally:
            cancelled.set()  # a cancelled request (the client left) stops at its next segment or sentence
        await future

    def _transcribe(self, message: ipc.Transcribe, cancelled: threading.Event) -> Iterator[Any]:
        assert isinstance(self.engine, SpeechRecognizer)
        samples = audio_codec.decode(message.audio, self.settings.max_audio_seconds)
        options = TranscribeOptions(task=message.task, language=message.language, prompt=message.prompt,
                                    temperature=message.temperature, word_timestamps=message.word_timestamps)
        segments, facts = self.engine.transcribe(samples, options)
        for index, segment in enumerate(segments):
            if cancelled.is_set():
                return
            yield msgspec.structs.replace(segment, request_id=message.request_id, id=index)
        yield ipc.Transcribed(request_id=message.request_id, language=facts["language"], duration=facts["duration"])

    def _speak(self, message: ipc.Speak, cancelled: threading.Event) -> Iterator[Any]:
        assert isinstance(self.engine, SpeechSynthesizer)
        rate = int(self.engine.describe()["sample_rate"])
        if not audio_codec.can_encode(message.response_format):
            raise InvalidRequest(f"response_format {message.response_format!r} cannot be written here: this "
                                 "server's FFmpeg has no encoder for it", param="response_format")
        if message.stream and message.response_format not in audio_codec.STREAMABLE:
            raise InvalidRequest(f"response_format {message.response_format!r} cannot stream; stream pcm or wav",
                                 param="response_format")
        chunks = self.engine.synthesize(message.text, message.voice, message.speed)
        rid = message.request_id
        samples = 0
        if message.stream:
            if message.response_format == "wav":
                yield ipc.SpeechChunk(request_id=rid, data=audio_codec.streaming_wav_header(rate))
            for pcm in chunks:
                if cancelled.is_set():
                    return
                samples += len(pcm) // 2
                yield ipc.SpeechChunk(request_id=rid, data=pcm)
        else:
            pcm = b"".join(chunks)
            samples = len(pcm) // 2
            yield ipc.SpeechChunk(request_id=rid, data=audio_codec.encode(pcm, rate, message.response_format))
        yield ipc.SpeechDone(request_id=rid, sample_rate=rate, samples=samples)

    def _images(self, message: ipc.MakeImages, cancelled: threading.Event) -> Iterator[Any]:
        assert isinstance(self.engine, ImageGenerator)
        images = self.engine.generate(message.prompt, n=message.n, width=message.width, height=message.height,
                                      steps=message.steps, seed=message.seed, negative_prompt=message.negative_prompt,
                                      guidance_scale=message.guidance_scale)
        yield ipc.Images(request_id=message.request_id, images=images)

    async def shutdown(self) -> None:
        """Release the engine and its thread."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self.engine.close)
        self._pool.shutdown(wait=False, cancel_futures=True)


_ENGINE_FOR: dict[type, type] = {
    ipc.Transcribe: SpeechRecognizer, ipc.Speak: SpeechSynthesizer, ipc.MakeImages: ImageGenerator}
_VERB = {ipc.Transcribe: "transcribe speech", ipc.Speak: "synthesize speech", ipc.MakeImages: "generate images"}


def create_media_service(config: Any, model_dir: Any, settings: Settings) -> MediaService:
    """Choose and build (not load) the engine of an audio or image model."""
    from berth_server.engines.media import build_media_engine

    return MediaService(build_media_engine(config, model_dir, settings), settings)
