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


class Generation:
    """Started, accepted generations of one HTTP request (one stream per choice or prompt)."""

    def __init__(self, streams: list[Any]) -> None:
        self.streams = streams

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
    try:
        for request in requests:
            streams.append(gateway.generate(request))
        for stream in streams:
            stream.accepted  # noqa: B018 - raises the typed error of a rejected request
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return Generation(streams)
