"""The one way a protocol service runs generations: start, await acceptance, relay, and always close.

OpenAI, TGI and SageMaker services all call start_generation(): it sends every request (one per
choice or per batched prompt), waits until each is accepted (so a rejection is still an HTTP 4xx,
before any stream starts), and closes them all if anything fails. The service then writes its wire
events from Generation.deltas(); the HTTP layer streams them or folds them into the whole reply
(protocols/reply.py), and calls Generation.close when the reply is done or the client has left.
Canonical finish reasons (CANONICAL_FINISH_REASONS, what every engine emits) become wire ones
through each wire's own table (a FinishReasons, declared in its protocol package).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from berth_server.canonical import Accepted, Delta, GenerateRequest
from berth_server.errors import GenerationFailed

# What an engine may end a choice with: out of tokens, its end-of-sequence token, a stop sequence or
# stop token, aborted (client gone, shutdown), or failed.
CANONICAL_FINISH_REASONS = frozenset({"length", "eos", "stop", "abort", "error"})


@dataclass(frozen=True)
class FinishReasons:
    """One wire's words for the canonical finish reasons; a reason it has no word for is an error.

    Attributes:
        words: canonical reason -> the wire's word; a canonical reason left out raises GenerationFailed.
        unknown: the word when the engine gave no reason.
    """

    words: Mapping[str, str]
    unknown: str

    def __post_init__(self) -> None:
        stray = set(self.words) - CANONICAL_FINISH_REASONS
        if stray:
            raise ValueError(f"not canonical finish reasons: {sorted(stray)}")

    def word(self, reason: str | None) -> str:
        """`reason` in this wire's words; a reason the wire has no word for raises GenerationFailed."""
        if reason is None:
            return self.unknown
        if reason not in self.words:
            raise GenerationFailed("generation ended with an error")
        return self.words[reason]


def by_choice(batch: Sequence[Delta]) -> list[Delta]:
    """Deltas that arrived together, each run of one choice's merged into one, in arrival order."""
    runs: list[list[Delta]] = []
    for delta in batch:
        if runs and runs[-1][-1].choice == delta.choice and runs[-1][-1].finish_reason is None:
            runs[-1].append(delta)
        else:
            runs.append([delta])
    return [coalesce(run) for run in runs]


def coalesce(batch: Sequence[Delta]) -> Delta:
    """Deltas that arrived together as one (FINDINGS: fewer, larger writes halve the relay cost)."""
    if len(batch) == 1:
        return batch[0]
    last = batch[-1]
    tokens = [token for delta in batch for token in delta.tokens or ()]
    return Delta(request_id=last.request_id, choice=last.choice, text="".join(d.text for d in batch),
                 reasoning="".join(d.reasoning for d in batch), tokens=tokens or None,
                 completion_tokens=last.completion_tokens, finish_reason=last.finish_reason,
                 stop_sequence=last.stop_sequence)


@dataclass(frozen=True)
class Timings:
    """How long a generation took, as the frontend saw it, in nanoseconds (Ollama reports these).

    Attributes:
        total_ns: from the request being sent to its last delta.
        prompt_eval_ns: from the request being sent to its first generated token (templating,
            tokenizing, waiting for a batch slot, prefill and the first step).
        eval_ns: from the first generated token to the last delta.
    """

    total_ns: int
    prompt_eval_ns: int
    eval_ns: int


class Generation:
    """Started, accepted generations of one HTTP request (one stream per choice or prompt)."""

    def __init__(self, streams: list[Any], started_ns: int | None = None) -> None:
        self.streams = streams
        self.started_ns = time.monotonic_ns() if started_ns is None else started_ns
        self._first_token_ns: int | None = None
        self._last_ns: int | None = None

    def _seen(self, batch: Sequence[Delta]) -> None:
        """Note when deltas arrived: the first generated token, and the latest delta."""
        now = time.monotonic_ns()
        if self._first_token_ns is None and any(d.completion_tokens or d.text or d.reasoning for d in batch):
            self._first_token_ns = now
        self._last_ns = now

    def timings(self) -> Timings:
        """The durations so far (read after the last delta for the whole generation's)."""
        last = self._last_ns if self._last_ns is not None else time.monotonic_ns()
        first = self._first_token_ns if self._first_token_ns is not None else last
        return Timings(total_ns=last - self.started_ns, prompt_eval_ns=first - self.started_ns, eval_ns=last - first)

    @property
    def accepted(self) -> list[Accepted]:
        """Each stream's Accepted, in request order."""
        return [stream.accepted for stream in self.streams]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the request: each prompt once, however many choices it has."""
        return sum(stream.accepted.prompt_tokens for stream in self.streams)

    def deltas(self, index: int = 0) -> Iterator[Delta]:
        """Stream `index`'s deltas (one choice per stream, as TGI sends), those already waiting merged into one."""
        for batch in self.streams[index].batches():
            self._seen(batch)
            yield coalesce(batch)

    @property
    def choice_count(self) -> int:
        """Choices over every stream: each request's n."""
        return sum(max(1, stream.request.n) for stream in self.streams)

    def choice_deltas(self) -> Iterator[tuple[int, Delta]]:
        """(choice index, delta) of every stream in turn, choices interleaved as they come; a stream's
        choice i is index offset + i, where offset counts the choices of the streams before it."""
        offset = 0
        for stream in self.streams:
            for batch in stream.batches():
                self._seen(batch)
                for delta in by_choice(batch):
                    yield offset + delta.choice, delta
            offset += max(1, stream.request.n)

    def stream_of(self, choice_index: int) -> int:
        """Which stream (request) a choice index belongs to."""
        for position, stream in enumerate(self.streams):
            choice_index -= max(1, stream.request.n)
            if choice_index < 0:
                return position
        raise IndexError(choice_index)

    def close(self) -> None:
        """Close every stream (aborting unfinished ones); idempotent."""
        for stream in self.streams:
            stream.close()


def start_generation(gateway: Any, requests: Sequence[GenerateRequest]) -> Generation:
    """Send every request, then wait until each is accepted; on any failure close them all and re-raise.

    Args:
        gateway: frontend.gateway.Gateway (or a test double with generate()).
        requests: canonical requests, sent before any is awaited so the model batches them.
    """
    streams: list[Any] = []
    started_ns = time.monotonic_ns()
    try:
        for request in requests:
            streams.append(gateway.generate(request))
        for stream in streams:
            stream.accepted  # noqa: B018 - raises the typed error of a rejected request
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return Generation(streams, started_ns)
