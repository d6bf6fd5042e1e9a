"""The one fake gateway of the unit tests: client/gateway.Gateway's calls answered from a script, no processes.

Protocol tests pick a script (`word_script`: words, reasoning and n interleaved choices; `token_script`:
one token per word with logprob details, stop strings, eos) and the model it describes; everything else
(acceptance, failures, batching, closing, adapters, embeddings, rerank, tokenizing) is the same code.
tests/unit/test_gateway_fakes_match.py checks its methods against the real Gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from berth_server import ipc
from berth_server.canonical import Accepted, Delta, GenerateRequest, TokenInfo, TopToken
from berth_server.errors import BerthError, InvalidRequest, NotFound
from berth_server.ipc import ModelStats, TokenSpan
from berth_server.launch_config import ModelDescription

from tests.unit.fakes.adapters import FakeAdapters

WORDS = ["Hello", " world", " again"]
Script = Callable[[GenerateRequest], list[Delta]]


def word_script(words: list[str], reasoning: list[str] | None = None) -> Script:
    """Reasoning pieces, then `words`, for each of the request's n choices interleaved; the last word says 'length'."""
    def script(request: GenerateRequest) -> list[Delta]:
        choices, rid, count, deltas = range(max(1, request.n)), request.request_id, 0, []
        for text in reasoning or []:
            count += 1
            deltas += [Delta(request_id=rid, choice=c, reasoning=text, completion_tokens=count) for c in choices]
        for index, text in enumerate(words):
            count += 1
            tokens = None
            if request.token_details:
                tokens = [TokenInfo(id=index, text=text, logprob=-0.5, top=[TopToken(id=index, text=text, logprob=-0.5)])]
            finish = "length" if index == len(words) - 1 else None
            deltas += [Delta(request_id=rid, choice=c, text=text, tokens=tokens, completion_tokens=count,
                             finish_reason=finish) for c in choices]
        return deltas
    return script


def token_script(words: list[str]) -> Script:
    """One token per word up to max_new_tokens, with logprobs and top alternatives; a stop string ends it
    early ('stop', cut from the text as the model process cuts it), else 'length' or 'eos'."""
    def script(request: GenerateRequest) -> list[Delta]:
        limit = request.sampling.max_new_tokens or len(words)
        top_n = request.sampling.logprobs or 0
        deltas: list[Delta] = []
        for index, word in enumerate(words[:limit]):
            if word.strip() in request.sampling.stop:
                deltas.append(Delta(request_id=request.request_id, text=word.replace(word.strip(), ""),
                                    completion_tokens=index, finish_reason="stop", stop_sequence=word.strip()))
                return deltas
            top = [TopToken(id=100 + k, text=f"alt{k}", logprob=-1.0 - k) for k in range(top_n)]
            token = TokenInfo(id=10 + index, text=word, logprob=-0.25, special=False, top=top or None)
            last = index == min(limit, len(words)) - 1
            finish = ("length" if limit < len(words) else "eos") if last else None
            deltas.append(Delta(request_id=request.request_id, text=word, tokens=[token],
                                completion_tokens=index + 1, finish_reason=finish))
        return deltas
    return script


class FakeStream:
    """Stands in for gateway.GenerationStream: Accepted (or the scripted rejection), then the script's Deltas."""

    def __init__(self, request: GenerateRequest, deltas: list[Delta], accepted: Accepted,
                 failure: BerthError | None, mid_failure: BerthError | None, per_batch: int) -> None:
        self.request = request
        self.deltas = deltas
        self._accepted = accepted
        self.failure = failure
        self.mid_failure = mid_failure
        self.per_batch = per_batch
        self.closed = False
        self.finished = False

    @property
    def accepted(self) -> Accepted:
        """Accepted, or the scripted rejection."""
        if self.failure is not None:
            raise self.failure
        return self._accepted

    def __iter__(self) -> Iterator[Delta]:
        """The script's Deltas, nothing after close(); the mid-stream failure comes after the first text token."""
        self.accepted  # noqa: B018
        first_text = next((d.completion_tokens for d in self.deltas if d.text), None)
        for delta in self.deltas:
            if self.closed:
                return
            if self.mid_failure is not None and first_text is not None and delta.completion_tokens > first_text:
                raise self.mid_failure
            self.finished = self.finished or delta.finish_reason is not None
            yield delta

    def batches(self) -> Iterator[list[Delta]]:
        """`per_batch` Deltas per batch (GenerationStream groups those already waiting); a final one flushes."""
        batch: list[Delta] = []
        for delta in self:
            batch.append(delta)
            if len(batch) == self.per_batch or delta.finish_reason is not None:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Record the close (an abort unless finished)."""
        self.closed = True


@dataclass
class FakeModel:
    """The model the fake serves: its uid, the names that resolve to it, and its limits."""

    uid: str = "default"
    names: tuple[str | None, ...] = (None, "", "tgi", "default")
    others: tuple[str, ...] = ("other",)
    abilities: list[str] = field(default_factory=lambda: ["chat"])
    max_input_tokens: int = 32
    context_length: int = 64
    described: dict[str, Any] = field(default_factory=dict)  # more (or other) ModelDescription fields


class FakeGateway(FakeAdapters):
    """The gateway API the protocols use, answering from a script (`word_script(WORDS)` unless told otherwise)."""

    def __init__(self, words: list[str] | None = None, reasoning: list[str] | None = None,
                 failure: BerthError | None = None, mid_failure: BerthError | None = None, *,
                 script: Script | None = None, model: FakeModel | None = None, ready: bool = True,
                 per_batch: int = 2, prompt_tokens: int | None = 5) -> None:
        self.words = WORDS if words is None else words
        self.script = script or word_script(self.words, reasoning)
        self.model = model or FakeModel()
        self.failure = failure
        self.mid_failure = mid_failure
        self.ready = ready
        self.per_batch = per_batch
        self.prompt_tokens = prompt_tokens  # None: one per prompt character (batched prompts count apart)
        self.requests: list[GenerateRequest] = []
        self.streams: list[FakeStream] = []

    def resolve_model(self, name: str | None) -> str:
        """The model's uid for its names, another served model's own name, NotFound otherwise."""
        if name in self.model.names:
            return self.model.uid
        if name in self.model.others:
            return str(name)
        raise NotFound(f"model '{name}' not found")

    def generate(self, request: GenerateRequest) -> FakeStream:
        """Record the request and script its stream."""
        self.requests.append(request)
        prompt_tokens = self.prompt_tokens if self.prompt_tokens is not None else (
            len(request.prompt) if request.prompt else 2)
        prefill = None
        if request.sampling.prompt_logprobs:
            prefill = [TokenInfo(id=1, text="<s>", logprob=None), TokenInfo(id=7, text="hi", logprob=-0.5)]
        accepted = Accepted(request_id=request.request_id, prompt_tokens=prompt_tokens, prefill=prefill,
                            prompt_text="PROMPT" if request.return_prompt_text else None)
        stream = FakeStream(request, self.script(request), accepted, self.failure, self.mid_failure, self.per_batch)
        self.streams.append(stream)
        return stream

    def tokenize(self, uid: str, text: str | None = None, messages: Any = None,
                 add_special_tokens: bool = True) -> list[TokenSpan]:
        """One span per space-separated word."""
        if not text:
            raise InvalidRequest("nothing to tokenize")
        spans, start = [], 0
        for index, word in enumerate(text.split(" ")):
            spans.append(TokenSpan(id=index, text=word, start=start, stop=start + len(word)))
            start += len(word) + 1
        return spans

    def embed(self, uid: str, texts: list[str], dimensions: int | None = None) -> ipc.Embedded:
        """[length, 0.5] per text; tokens are words."""
        return ipc.Embedded("r", [[float(len(t)), 0.5] for t in texts], sum(len(t.split()) for t in texts))

    def rerank(self, uid: str, query: str, documents: list[str]) -> ipc.Reranked:
        """Shared characters / 10 per document."""
        return ipc.Reranked("r", [len(set(query) & set(d)) / 10 for d in documents], 7)

    def statuses(self) -> dict[str, dict[str, Any]]:
        """One ready model."""
        return {self.model.uid: {"uid": self.model.uid, "state": "ready",
                                 "description": {"model_name": "tiny", "model_type": "LLM",
                                                 "abilities": self.model.abilities,
                                                 "context_length": self.model.context_length}}}

    def describe(self, uid: str) -> ModelDescription:
        """The model, on a CPU."""
        fields: dict[str, Any] = {
            "model_name": "tiny", "model_type": "LLM", "source": "/models/tiny", "engine": "transformers",
            "device": "cpu", "dtype": "float32", "abilities": self.model.abilities,
            "max_input_tokens": self.model.max_input_tokens, "max_total_tokens": self.model.context_length,
            "context_length": self.model.context_length, "max_batch_size": 8, "pid": 1}
        return ModelDescription(uid=uid, **{**fields, **self.model.described})

    def stats(self, uid: str, timeout_s: float = 2.0, replica: int | None = None) -> ModelStats:
        """Fixed counters."""
        return ModelStats(request_id="x", running=2, waiting=3, aborted_total=4,
                          prefix_cache_queries_total=120, prefix_cache_hits_total=96)

    def default_ready(self) -> bool:
        """Whether the default model is ready (as told)."""
        return self.ready


class FakeControl:
    """Records control calls and answers nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, **params: Any) -> Any:
        """Record and answer {}."""
        self.calls.append((method, params))
        return {}
