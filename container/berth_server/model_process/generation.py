"""One Generate request's life in the model process: prepare once, Accepted, the n choices' Deltas, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest, choice_seed
from berth_server.engines.base import Engine, EngineRequest, EngineStep
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest, failure_of
from berth_server.model_process.output_stream import OutputStream
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


@dataclass
class _Choice:
    """One of a request's n choices inside the engine: its own engine request, steps and output state."""

    index: int
    engine_request: EngineRequest
    stream: OutputStream
    steps: AsyncIterator[EngineStep] | None = None
    engine_done: bool = False  # the engine finished it (nothing left to abort)
    ended: bool = False  # its last Delta was sent
    thinking_budget: int | None = None  # close the reasoning block after this many of its tokens
    # Tokens generated so far, kept only while a thinking budget may still close the block (its continuation's prompt).
    generated_ids: list[int] = dataclasses.field(default_factory=list)


def choice_request_id(request_id: str, choice: int) -> str:
    """The engine's id for one choice of a request (the request's own id when it has one choice)."""
    return request_id if choice == 0 else f"{request_id}/{choice}"


async def run_generation(server: GenerationHost, peer: bytes, request: GenerateRequest) -> None:
    """Prepare the prompt once, generate its n choices, stream their Deltas to `peer`; always free the slots."""
    pipeline, engine, counters = server.pipeline, server.engine, server.counters
    assert pipeline is not None and engine is not None
    rid = request.request_id
    try:
        if request.thinking_budget is not None and request.sampling.constraint is not None:
            # The constraint's state would not carry over the continuation that closes the thinking.
            raise InvalidRequest("a thinking budget cannot be combined with a forced output format or tool "
                                 "choice", param="thinking")
        prepared = await pipeline.prepare_async(request)
        if request.sampling.constraint is not None and not engine.compiles_constraints:
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
    budget = request.thinking_budget if pipeline.reasoning and request.split_reasoning else None
    choices = [_Choice(i, _for_choice(prepared.engine_request, rid, i), pipeline.output_stream(request, prepared),
                       thinking_budget=budget) for i in range(max(1, request.n))]
    accepted = Accepted(request_id=rid, prompt_tokens=len(prepared.prompt_ids),
                        prompt_text=prepared.prompt_text if request.return_prompt_text else None)
    accepted_sent = False
    try:
        # The engine checks and queues each choice here and raises what it refuses, so a refusal is
        # a Failure (a 4xx) before Accepted, never an error inside a stream that already started.
        for choice in choices:
            choice.steps = await engine.submit(choice.engine_request)
        first: EngineStep | None = None
        if request.sampling.prompt_logprobs:  # they come with the first step and belong in Accepted
            first = await _next_step(choices[0])
            accepted.prefill = choices[0].stream.prefill(first, prepared.prompt_ids)
        server.emit(peer, accepted)
        accepted_sent = True
        await _all_of([_relay(server, peer, choice, first if choice.index == 0 else None) for choice in choices])
        if any(choice.stream.finish_reason == "abort" for choice in choices):
            counters.aborted_total += 1
        else:
            counters.finished_total += 1
    except asyncio.CancelledError:  # Abort from the frontend, its peer went away, or shutdown
        counters.aborted_total += 1
        if not accepted_sent:
            server.emit(peer, Failure(request_id=rid, message="the request was aborted before it started",
                                      error_type="overloaded"))
        for choice in choices:
            if accepted_sent and not choice.ended:
                server.emit(peer, Delta(request_id=rid, choice=choice.index,
                                        completion_tokens=choice.stream.completion_tokens, finish_reason="abort"))
    except BerthError as exc:
        server.emit(peer, failure_of(rid, exc))
    except Exception as exc:
        log.exception("request %s: generation failed", rid)
        server.emit(peer, Failure(request_id=rid, message=f"generation failed: {exc}"))
    finally:
        for choice in choices:
            await _release(engine, choice)


def _for_choice(engine_request: EngineRequest, request_id: str, choice: int) -> EngineRequest:
    """Choice `choice` of a prepared request: its own id, and seed + choice when the request is seeded."""
    if choice == 0:
        return engine_request
    sampling = msgspec.structs.replace(engine_request.sampling,
                                       seed=choice_seed(engine_request.sampling.seed, choice))
    # Only choice 0 continues a session's cached turns: the others would otherwise wait for its llama.cpp slot.
    return dataclasses.replace(engine_request, request_id=choice_request_id(request_id, choice), sampling=sampling,
                               session_id=None)


async def _next_step(choice: _Choice) -> EngineStep:
    assert choice.steps is not None
    step = await anext_or_none(choice.steps)
    if step is None:
        raise GenerationFailed("the engine ended the request without finishing it")
    return step


async def _relay(server: GenerationHost, peer: bytes, choice: _Choice, first: EngineStep | None) -> None:
    """Turn one choice's engine steps into Deltas until it finishes (a stop string, EOS, length or abort)."""
    step = first if first is not None else await _next_step(choice)
    while True:
        choice.engine_done = step.finish is not None
        server.counters.generated_tokens_total += len(step.token_ids)
        if choice.thinking_budget is not None:
            choice.generated_ids.extend(step.token_ids)
        delta = choice.stream.process(step)
        if delta is not None:
            delta.choice = choice.index
            choice.ended = delta.finish_reason is not None
            server.emit(peer, delta)
        if choice.stream.finished:
            return
        thinking = choice.stream.thinking_tokens
        if choice.thinking_budget is not None and thinking is not None and thinking >= choice.thinking_budget:
            step = await _close_thinking(server, choice)
            continue
        step = await _next_step(choice)


async def _close_thinking(server: GenerationHost, choice: _Choice) -> EngineStep:
    """End a choice's reasoning block at its budget: stop the engine request, continue from the prompt, what
    it generated and the end tag, and return the end tag's tokens as the next step (its Delta closes the block).

    Every engine can do this (a new request on longer prompt ids); the answer then follows the thoughts so far.
    """
    engine, pipeline = server.engine, server.pipeline
    assert engine is not None and pipeline is not None
    choice.thinking_budget = None  # once
    close_ids = pipeline.thinking_close_ids()
    original = choice.engine_request
    remaining = original.max_new_tokens - choice.stream.completion_tokens - len(close_ids)
    if remaining <= 0:  # no room left to answer: the model runs on to its token limit
        return await _next_step(choice)
    await _release(engine, choice)
    choice.engine_request = dataclasses.replace(
        original, request_id=f"{original.request_id}/answer", max_new_tokens=remaining,
        prompt_token_ids=[*original.prompt_token_ids, *choice.generated_ids, *close_ids])
    choice.steps, choice.engine_done = await engine.submit(choice.engine_request), False
    return EngineStep(token_ids=close_ids)


async def _all_of(relays: list[Coroutine[Any, Any, None]]) -> None:
    """Run the choices' relays together; the first that fails stops the others and raises."""
    tasks = [asyncio.ensure_future(relay) for relay in relays]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _release(engine: Engine, choice: _Choice) -> None:
    """Close a choice's step iterator and, unless the engine finished it, free its slot now."""
    aclose = getattr(choice.steps, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(BaseException):
            await aclose()
    if not choice.engine_done:  # a stop string, an abort or an error
        with contextlib.suppress(Exception):
            await engine.abort(choice.engine_request.request_id)


async def anext_or_none(steps: AsyncIterator[EngineStep]) -> EngineStep | None:
    """The next step, or None when the engine's iterator is exhausted."""
    try:
        return await steps.__anext__()
    except StopAsyncIteration:
        return None
