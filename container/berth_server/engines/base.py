"""The engine interface: token ids in, a stream of token steps out, with batching across requests.

Engines work on token ids only. Chat templates, tokenization, detokenization, stop strings and
reasoning splitting live once, in the model process's text pipeline, so every engine behaves
the same. An engine handles EOS, stop_token_ids, max_new_tokens and sampling itself.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from berth_server.canonical import SamplingParams
from berth_server.errors import InvalidRequest, NotFound

EngineFinish = Literal["length", "eos", "abort"]


class EngineCrashedAtStart(InvalidRequest):
    """The engine's own process died while loading or on its first step (a signal, an unsupported kernel).

    The engine cannot run this model on this machine; `auto` then tries the next engine.
    """


@dataclass(frozen=True)
class EngineRequest:
    """What an engine needs to generate: the prompt's ids and the sampling knobs."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    # EOS ids of the model (generation_config + tokenizer) plus the request's and spec's stop ids.
    stop_token_ids: frozenset[int] = frozenset()
    max_new_tokens: int = 16  # already resolved against the context length
    adapter: str | None = None  # a registered LoRA adapter's name; None: the base model
    # sampling.bad_words as token-id sequences (each word with and without a leading space, as vLLM does).
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    # sampling.constraint compiled by the model process (an xgrammar CompiledGrammar); engines that
    # enforce constraints themselves (vLLM) ignore it.
    grammar: Any = None
    # The stateful session the request belongs to (canonical GenerateRequest.session_id): an engine that
    # can keep a session's KV for its next turn (llama.cpp's slots) reads it; others ignore it.
    session_id: str | None = None


@dataclass
class EngineStep:
    """New tokens for one request since its last step. The last step has finish set.

    logprobs/top_logprobs are parallel to token_ids and present only when sampling.logprobs is set.
    prompt_logprobs arrives on the first step only, when sampling.prompt_logprobs is set:
    one entry per prompt token, None for the first.
    """

    token_ids: list[int]
    finish: EngineFinish | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[float | None] | None = None


@dataclass(frozen=True)
class EngineLoadInfo:
    """What the engine reports once loaded (for /info and logs)."""

    engine: str
    device: str
    dtype: str
    max_model_len: int
    max_batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """A loaded model that generates for many requests at once."""

    name: str = "base"
    # It compiles constraints itself (engines/facts.py EngineFacts.compiles_constraints): the model process
    # passes sampling.constraint on as it is, without compiling a token mask the engine would not read.
    compiles_constraints: bool = False

    @abc.abstractmethod
    async def start(self) -> EngineLoadInfo:
        """Load weights and start batching; return what was loaded."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """Queue a request and yield its steps as the batch produces them (submit() checks it first).

        Closing the iterator early (aclose) must abort the request and free its slot.
        """

    def check(self, request: EngineRequest) -> None:
        """Raise InvalidRequest (or another BerthError) for a request this engine cannot run; queues nothing."""

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        """Check and queue a request, then hand back its steps.

        Everything the engine refuses is raised here, before the model process tells the frontend the
        request was accepted: a refusal is always a 4xx, never an error inside a stream that already
        started. Engines that only learn of a refusal once the request runs override this.
        """
        self.check(request)
        return self.generate(request)

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request now; its iterator ends with finish='abort'."""

    @abc.abstractmethod
    def counts(self) -> tuple[int, int]:
        """(running, waiting): the current batch size and the queue depth."""

    def prefix_counts(self) -> tuple[int, int] | None:
        """(prompt tokens looked up in the prefix cache, tokens found there) so far; None when not counted."""
        return None

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the batching loop and release the device."""

    async def close_session(self, session_id: str) -> None:
        """A stateful session was closed or expired: free what the engine keeps for it (default: nothing kept)."""

    def pinned_sessions(self) -> int:
        """How many sessions the engine keeps state for now (for stats and tests; default: none)."""
        return 0

    # LoRA adapters: engines that serve them override these three.
    async def add_adapter(self, name: str, src: str, folder: Path, pin: bool = False) -> dict[str, Any]:
        """Register a LoRA adapter from a local folder; return its description."""
        raise InvalidRequest(f"the {self.name} engine does not serve LoRA adapters", param="adapter")

    async def remove_adapter(self, name: str) -> None:
        """Forget a LoRA adapter."""
        raise NotFound(f"adapter '{name}' not found")

    def adapters(self) -> list[dict[str, Any]]:
        """The registered adapters: name, src, rank, pinned, loaded."""
        return []
