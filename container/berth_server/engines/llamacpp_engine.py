"""The llama.cpp engine: llama.cpp's server in-process (xllamacpp) behind Berth's token-ids-in, token-steps-out interface.

llama.cpp decodes concurrent requests together in its parallel slots (continuous batching). The
model process keeps the chat template, tokenization, detokenization and stop strings, so each
request goes in as prompt token ids and comes back as token ids, read from the ids llama.cpp
names in each streamed chunk. xllamacpp is imported lazily (in start), never at module import.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.engines import llamacpp_params
from berth_server.engines.base import Engine, EngineFinish, EngineLoadInfo, EngineRequest, EngineStep
from berth_server.engines.cpus import usable_cpus
from berth_server.engines.facts import LLAMA_CPP
from berth_server.engines.llamacpp_sessions import SessionSlots
from berth_server.engines.llamacpp_tokens import TokenBytes
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)
_FINISH: dict[str, EngineFinish] = {"stop": "eos", "length": "length"}
_DONE = object()
_ABORT = object()


@dataclass(eq=False)
class _Running:
    """One request inside llama.cpp: the queue its chunks land in and whether to stop it."""

    queue: asyncio.Queue[Any]
    loop: asyncio.AbstractEventLoop
    stop: bool = False
    seen: int = 0  # tokens reported so far (predicted_n counts them on llama.cpp's side)
    chunks: list[Any] = field(default_factory=list)
    timings: dict[str, Any] | None = None  # the last chunk's: how much of the prompt the slot's cache held

    def deliver(self, chunk: Any) -> bool:
        """xllamacpp's callback (its thread, with the GIL): queue the chunk; True tells llama.cpp to stop."""
        if isinstance(chunk, dict) and isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        if not self.stop:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
        return self.stop


class LlamaCppEngine(Engine):
    """xllamacpp.Server fed with prompt token ids; yields token-id deltas per request."""

    name = LLAMA_CPP.name
    compiles_constraints = LLAMA_CPP.compiles_constraints

    def __init__(self, model_dir: Path, config: ModelLaunchConfig, settings: Settings) -> None:
        self.model_path = Path(model_dir)
        self.config = config
        self.settings = settings
        self._server: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[str, _Running] = {}
        self._n_parallel = 1
        self._prefix = [0, 0]  # prompt tokens, and of those tokens reused from the slot's cache (cache_n)
        self._prefix_lock = threading.Lock()  # requests finish on the pool's threads
        self._n_vocab = 0
        self._token_bytes: TokenBytes | None = None
        self._sessions = SessionSlots(1)

    @staticmethod
    def cannot_serve(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
        """Why llama.cpp cannot serve this spec (for `auto` to move on), or None when it can."""
        if importlib.util.find_spec("xllamacpp") is None:
            return "xllamacpp is not installed (pip install 'berth[llamacpp]')"
        if config.model_type != "LLM":
            return f"Berth serves only LLM models on llama.cpp (this one is {config.model_type})"
        if llamacpp_params.gguf_path(Path(model_dir)) is None:
            return f"it serves GGUF weights only, and {model_dir} is not a .gguf file"
        return None

    async def start(self) -> EngineLoadInfo:
        """Read the GGUF header, start llama.cpp's server in-process (a load thread) and report its shape."""
        path = llamacpp_params.gguf_path(self.model_path)
        if path is None:
            raise errors.InvalidRequest(f"no .gguf file at {str(self.model_path)!r}", param="model")
        facts = await asyncio.to_thread(llamacpp_params.read_gguf_facts, path)
        on_gpu = self.settings.device not in ("cpu",) and llamacpp_params.gpu_visible()
        options = llamacpp_params.server_options(path, facts, self.config, self.settings, len(usable_cpus()),
                                                 on_gpu)
        log.info("starting llama.cpp on %s: %s", path.name, options)
        self._server = await asyncio.to_thread(self._create_server, options)
        self._n_parallel = options.n_parallel
        self._sessions = SessionSlots(options.n_parallel)
        self._n_vocab = facts.n_vocab
        # Threads block in handle_completions for a request's whole life; waiting ones queue in llama.cpp.
        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrent_requests + 2,
                                        thread_name_prefix="llamacpp")
        return EngineLoadInfo(
            engine=self.name, device="gpu" if options.n_gpu_layers else "cpu", dtype=facts.file_type,
            max_model_len=options.slot_context, max_batch_size=options.n_parallel,
            extra={"threads": options.threads, "n_ctx": options.n_ctx, "architecture": facts.architecture},
        )

    @staticmethod
    def _create_server(options: llamacpp_params.ServerOptions) -> Any:
        import xllamacpp

        try:
            return xllamacpp.Server(llamacpp_params.common_params(options, secrets.token_hex(16)))
        except RuntimeError as exc:  # "Failed to init server": an unloadable file or impossible sizes
            raise errors.InvalidRequest(f"llama.cpp cannot load {str(options.model_path)!r}: {exc}",
                                        param="model") from None

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """llama.cpp checks a request only when its thread runs it: wait for the first step, so its
        refusal is raised here (a 4xx) rather than inside a stream that already started."""
        steps = self.generate(request)
        first = await steps.__anext__()  # an error or a cancellation here has already closed `steps`
        return _chained(first, steps)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """Run the request in llama.cpp and yield its token ids; closing early stops it and frees its slot."""
        body = llamacpp_params.completion_body(request, self._n_vocab)
        if request.session_id is not None:  # the session's slot still holds its earlier turns (cache_prompt)
            body["id_slot"] = self._sessions.slot_for(request.session_id)
        loop = asyncio.get_running_loop()
        running = _Running(asyncio.Queue(), loop)
        self._running[request.request_id] = running
        assert self._pool is not None
        job = loop.run_in_executor(self._pool, self._run, body, running)
        try:
            while True:
                chunk = await running.queue.get()
                if chunk is _DONE:
                    raise errors.GenerationFailed("llama.cpp ended the request without finishing it")
                if chunk is _ABORT:
                    yield EngineStep(token_ids=[], finish="abort")
                    return
                if isinstance(chunk, BaseException):
                    raise chunk
                step = self._step(chunk, running, request)
                if step is None:
                    continue
                yield step
                if step.finish is not None:
                    return
        finally:
            running.stop = True  # llama.cpp hears it at its next token and releases the slot
            self._running.pop(request.request_id, None)
            job.add_done_callback(_log_failure)

    def _run(self, body: dict[str, Any], running: _Running) -> None:
        """Blocking: llama.cpp streams the request's chunks through running.deliver (a pool thread)."""
        try:
            self._server.handle_completions(body, running.deliver)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request
            running.loop.call_soon_threadsafe(running.queue.put_nowait,
                                              errors.GenerationFailed(f"llama.cpp failed: {exc}"))
        finally:
            if running.timings is not None:
                self._count_prefix(running.timings)
            running.loop.call_soon_threadsafe(running.queue.put_nowait, _DONE)

    def _count_prefix(self, timings: dict[str, Any]) -> None:
        """Add a request's prompt tokens and those its slot's prompt cache held (llama.cpp's cache_n)."""
        cached, computed = int(timings.get("cache_n") or 0), int(timings.get("prompt_n") or 0)
        with self._prefix_lock:
            self._prefix[0] += cached + computed
            self._prefix[1] += cached

    def _step(self, chunk: Any, running: _Running, request: EngineRequest) -> EngineStep | None:
        """Turn one streamed chunk into a step (None when it carries nothing)."""
        if not isinstance(chunk, dict) or "choices" not in chunk:
            raise _error(chunk)
        choice = chunk["choices"][0]
        verbose = chunk.get("__verbose") or {}
        entries = (choice.get("logprobs") or {}).get("content") or []
        reported = [int(t) for t in verbose.get("tokens") or []] or [int(e["id"]) for e in entries]
        predicted = verbose.get("tokens_predicted")
        if not reported and choice.get("text"):  # an xllamacpp whose llama.cpp ignores "verbose" per request
            raise errors.GenerationFailed("llama.cpp streamed text without naming its token ids")
        # Tokens llama.cpp made but did not report come before this chunk's first token.
        missing = int(predicted) - running.seen - len(reported) if predicted is not None and reported else 0
        # The text holds U+FFFD where merged bytes are not UTF-8; the entries hold the bytes themselves.
        sent = b"".join(bytes(e.get("bytes") or []) for e in entries) if entries else \
            str(choice.get("text") or "").encode("utf-8")
        ids = self._recover(reported, sent, missing) + reported
        running.seen += len(ids)
        finish: EngineFinish | None = _FINISH.get(str(choice.get("finish_reason")))
        if finish is None and running.seen >= request.max_new_tokens:
            finish = "length"  # say so with the last token, not in an empty step after it
        for i, token_id in enumerate(ids):
            if token_id in request.stop_token_ids:  # Berth's stop ids go beyond llama.cpp's EOG tokens
                ids, finish = ids[: i + 1], "eos"
                break
        if not ids and finish is None:
            return None
        step = EngineStep(token_ids=ids, finish=finish)
        top_n = request.sampling.logprobs
        if top_n is not None:
            # No logprobs for recovered tokens: llama.cpp's entries belong to the tokens it reported.
            lost = max(missing, 0)
            logprobs = [float("nan")] * lost + [float(e["logprob"]) for e in entries]
            tops: list[list[tuple[int, float]]] = [[] for _ in range(lost)]
            tops += [[(int(t["id"]), float(t["logprob"])) for t in e.get("top_logprobs") or []][:top_n]
                     for e in entries]
            step.logprobs, step.top_logprobs = logprobs[: len(ids)], tops[: len(ids)]
        return step

    def _recover(self, reported: list[int], sent: bytes, missing: int) -> list[int]:
        """Ids of tokens llama.cpp merged into this chunk's bytes (they ended inside a UTF-8 character)."""
        if missing <= 0:
            return []
        if self._token_bytes is None:
            self._token_bytes = TokenBytes.from_gguf(llamacpp_params.gguf_path(self.model_path) or self.model_path)
        found = self._token_bytes.recover(reported, sent, missing)
        if found is None:
            raise errors.GenerationFailed(f"cannot recover the ids of {missing} tokens llama.cpp merged into {sent!r}")
        return found

    async def abort(self, request_id: str) -> None:
        """Stop a request; llama.cpp frees its slot at the next token."""
        running = self._running.get(request_id)
        if running is not None:
            running.stop = True
            running.queue.put_nowait(_ABORT)

    async def close_session(self, session_id: str) -> None:
        """Unpin the session's slot: any request may take it (and overwrite its cache) from now on."""
        self._sessions.release(session_id)

    def pinned_sessions(self) -> int:
        """Sessions holding a slot."""
        return len(self._sessions)

    def counts(self) -> tuple[int, int]:
        """(running, waiting): requests in llama.cpp's slots and those queued for one."""
        in_flight = len(self._running)
        running = min(in_flight, self._n_parallel)
        return running, in_flight - running

    def prefix_counts(self) -> tuple[int, int]:
        """(prompt tokens, of those reused from the slot's prompt cache) as llama.cpp's timings report them."""
        return self._prefix[0], self._prefix[1]

    async def shutdown(self) -> None:
        """Stop every request and llama.cpp's server loop."""
        for running in list(self._running.values()):
            running.stop = True
        server, self._server = self._server, None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if server is not None:
            await asyncio.to_thread(_drop, server)


def _drop(server: Any) -> None:
    """Destroy the server off the event loop (its destructor joins llama.cpp's loop thread)."""
    del server


def _error(chunk: Any) -> errors.BerthError:
    """A llama.cpp error body as a Berth error: 4xx codes are the request's fault."""
    body = chunk.get("error", chunk) if isinstance(chunk, dict) else {"message": str(chunk)}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    message = str(body.get("message") or body)
    code = body.get("code")
    if isinstance(code, int) and 400 <= code < 500:
        return errors.InvalidRequest(f"llama.cpp rejected the request: {message}")
    return errors.GenerationFailed(f"llama.cpp failed: {message}")


def _log_failure(job: Any) -> None:
    with contextlib.suppress(Exception):
        if job.exception() is not None:
            log.warning("llama.cpp request thread failed: %s", job.exception())


async def _chained(first: EngineStep, rest: AsyncIterator[EngineStep]) -> AsyncIterator[EngineStep]:
    """`first`, then the rest of a request's steps; closing this closes the request's own iterator."""
    try:
        yield first
        if first.finish is None:
            async for step in rest:
                yield step
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
