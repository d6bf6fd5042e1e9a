"""One Generate request's life in the model process: prepare, Accepted, Deltas, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.engines.base import Engine, EngineStep
from berth_server.errors import BerthError, failure_of
from berth_server.model_process.text_pipeline import TextPipeline

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """Cumulative counters behind ModelStats (incremented here, reported by the server)."""

    requests_total: int = 0
    generated_tokens_total: int = 0
    prompt_tokens_total: int = 0
    aborted_total: int = 0
    finished_total: int = 0


class GenerationHost(Protocol):
    """What a generation needs from the model server that runs it (server.ModelServer)."""

    pipeline: TextPipeline | None
    engine: Engine | None
    counters: Counters

    def emit(self, peer: bytes, event: Any) -> None:
        """Queue an event for `peer`."""


async def run_generation(server: GenerationHost, peer: bytes, request: GenerateRequest) -> None:
    """Validate, stream the engine's steps as Deltas to `peer`, and always free the engine slot."""
    pipeline, engine, counters = server.pipeline, server.engine, server.counters
    assert pipeline is not None and engine is not None
    rid = request.request_id
    try:
        prepared = await pipeline.prepare_async(request)
        if request.sampling.constraint is not None:
            prepared = await pipeline.constrain(prepared, request.sampling.constraint)
    except asyncio.CancelledError:  # aborted while its prompt was being prepared
        server.emit(peer, Failure(request_id=rid, message="the request was aborted before it started",
                                  error_type="overloaded"))
        return
    except BerthError as exc:
        server.emit(peer, failure_of(rid, exc))
        return
    except Exception as exc:
        log.exception("request %s: preparing the prompt failed", rid)
        server.emit(peer, Failure(request_id=rid, message=f"internal error preparing the prompt: {exc}"))
        return
    counters.requests_total += 1
    counters.prompt_tokens_total += len(prepared.prompt_ids)
    stream = pipeline.output_stream(request, prepared)
    accepted = Accepted(request_id=rid, prompt_tokens=len(prepared.prompt_ids), prompt_text=prepared.prompt_text)
    accepted_sent = False
    steps: AsyncIterator[EngineStep] | None = None
    engine_done = False
    try:
        # The engine checks and queues the request here and raises what it refuses, so a refusal is
        # a Failure (a 4xx) before Accepted, never an error inside a stream that already started.
        steps = await engine.submit(prepared.engine_request)
        if not request.sampling.prompt_logprobs:
            server.emit(peer, accepted)
            accepted_sent = True
        step: EngineStep | None = await anext_or_none(steps)
        while step is not None:
            engine_done = step.finish is not None
            if not accepted_sent:  # prompt logprobs come with the first step and belong in Accepted
                accepted.prefill = stream.prefill(step, prepared.prompt_ids)
                server.emit(peer, accepted)
                accepted_sent = True
            counters.generated_tokens_total += len(step.token_ids)
            delta = stream.process(step)
            if delta is not None:
                server.emit(peer, delta)
            if stream.finished:
                if delta is not None and delta.finish_reason == "abort":
                    counters.aborted_total += 1
                else:
                    counters.finished_total += 1
                break
            step = await anext_or_none(steps)
        else:
            server.emit(peer, Failure(request_id=rid, message="the engine ended the request without finishing it"))
    except asyncio.CancelledError:  # Abort from the frontend, its peer went away, or shutdown
        counters.aborted_total += 1
        if accepted_sent:
            server.emit(peer, Delta(request_id=rid, completion_tokens=stream.completion_tokens, finish_reason="abort"))
        else:
            server.emit(peer, Failure(request_id=rid, message="the request was aborted before it started",
                                      error_type="overloaded"))
    except BerthError as exc:
        server.emit(peer, failure_of(rid, exc))
    except Exception as exc:
        log.exception("request %s: generation failed", rid)
        server.emit(peer, Failure(request_id=rid, message=f"generation failed: {exc}"))
    finally:
        aclose = getattr(steps, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
        if not engine_done:  # a stop string, an abort or an error: free the slot now
            with contextlib.suppress(Exception):
                await engine.abort(rid)


async def anext_or_none(steps: AsyncIterator[EngineStep]) -> EngineStep | None:
    """The next step, or None when the engine's iterator is exhausted."""
    try:
        return await steps.__anext__()
    except StopAsyncIteration:
        return None
