"""A scripted fake gateway and control for frontend/OpenAI unit tests (no processes), plus its own checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from berth_server.canonical import Accepted, Delta, GenerateRequest, TokenInfo, TopToken
from berth_server.errors import BerthError, NotFound
from berth_server.ipc import ModelStats
from berth_server.launch_config import ModelDescription

from tests.unit.fakes.adapters import FakeAdapters

WORDS = ["Hello", " world", " again"]


class FakeStream:
    """Stands in for gateway.GenerationStream: Accepted, then one Delta per word."""

    def __init__(self, request: GenerateRequest, words: list[str], reasoning: list[str],
                 failure: BerthError | None, mid_failure: BerthError | None) -> None:
        self.request = request
        self.words = words
        self.reasoning = reasoning
        self.failure = failure
        self.mid_failure = mid_failure
        self.closed = False
        self.finished = False

    @property
    def accepted(self) -> Accepted:
        """Accepted, or the scripted rejection."""
        if self.failure is not None:
            raise self.failure
        return Accepted(request_id=self.request.request_id, prompt_tokens=5,
                        prompt_text="PROMPT" if self.request.return_prompt_text else None)

    def __iter__(self) -> Iterator[Delta]:
        """The words for each of the request's n choices, the choices interleaved word by word."""
        self.accepted  # noqa: B018
        choices = range(max(1, self.request.n))
        count = 0
        rid = self.request.request_id
        for text in self.reasoning:
            count += 1
            yield from (Delta(request_id=rid, choice=c, reasoning=text, completion_tokens=count) for c in choices)
        for index, text in enumerate(self.words):
            if self.closed:
                return
            if self.mid_failure is not None and index == 1:
                raise self.mid_failure
            count += 1
            tokens = None
            if self.request.token_details:
                tokens = [TokenInfo(id=index, text=text, logprob=-0.5,
                                    top=[TopToken(id=index, text=text, logprob=-0.5)])]
            last = index == len(self.words) - 1
            if last:
                self.finished = True
            for choice in choices:
                yield Delta(request_id=rid, choice=choice, text=text, tokens=tokens, completion_tokens=count,
                            finish_reason="length" if last else None)

    def batches(self) -> Iterator[list[Delta]]:
        """Two deltas per batch, so merging is exercised."""
        batch: list[Delta] = []
        for delta in self:
            batch.append(delta)
            if len(batch) == 2 or self.finished:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Record the close (an abort unless finished)."""
        self.closed = True


class FakeGateway(FakeAdapters):
    """Scripted gateway: every generation yields WORDS unless told otherwise."""

    def __init__(self, words: list[str] | None = None, reasoning: list[str] | None = None,
                 failure: BerthError | None = None, mid_failure: BerthError | None = None) -> None:
        self.words = WORDS if words is None else words
        self.reasoning = reasoning or []
        self.failure = failure
        self.mid_failure = mid_failure
        self.requests: list[GenerateRequest] = []
        self.streams: list[FakeStream] = []

    def resolve_model(self, name: str | None) -> str:
        """'default' for the default names, 'other' for itself, NotFound otherwise."""
        if name in (None, "", "tgi", "default"):
            return "default"
        if name == "other":
            return "other"
        raise NotFound(f"model '{name}' not found")

    def generate(self, request: GenerateRequest) -> FakeStream:
        """Record the request and script its stream."""
        self.requests.append(request)
        stream = FakeStream(request, list(self.words), list(self.reasoning), self.failure, self.mid_failure)
        self.streams.append(stream)
        return stream

    def statuses(self) -> dict[str, dict[str, Any]]:
        """One ready model."""
        return {"default": {"uid": "default", "state": "ready",
                            "description": {"model_name": "tiny", "model_type": "LLM", "abilities": ["chat"],
                                            "context_length": 64}}}

    def describe(self, uid: str) -> ModelDescription:
        """The one model, on a CPU."""
        return ModelDescription(uid=uid, model_name="tiny", model_type="LLM", source="/models/tiny",
                                engine="transformers", device="cpu", dtype="float32", abilities=["chat"],
                                max_input_tokens=32, max_total_tokens=64, context_length=64, max_batch_size=8,
                                pid=1)

    def stats(self, uid: str) -> ModelStats:
        """Fixed counters."""
        return ModelStats(request_id="x", running=2, waiting=3, aborted_total=4)

    def default_ready(self) -> bool:
        """Always ready."""
        return True


class FakeControl:
    """Records control calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, **params: Any) -> Any:
        """Record and answer nothing."""
        self.calls.append((method, params))
        return {}


def test_fake_stream_finishes_with_length() -> None:
    gateway = FakeGateway()
    stream = gateway.generate(GenerateRequest(request_id="r", model="default"))
    deltas = list(stream)
    assert "".join(d.text for d in deltas) == "".join(WORDS)
    assert deltas[-1].finish_reason == "length" and stream.finished
