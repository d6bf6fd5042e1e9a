"""A scripted fake gateway for TGI and SageMaker unit tests (no model process), plus its own checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from berth_server.canonical import Accepted, Delta, GenerateRequest, TokenInfo, TopToken
from berth_server.errors import BerthError, InvalidRequest
from berth_server.ipc import TokenSpan
from berth_server.launch_config import ModelDescription

from tests.unit.fakes.adapters import FakeAdapters

WORDS = ["Hello", " world", " again", " and", " more"]


class FakeStream:
    """Stands in for gateway.GenerationStream: Accepted, then one Delta per token."""

    def __init__(self, request: GenerateRequest, script: list[Delta], failure: BerthError | None,
                 mid_failure: BerthError | None) -> None:
        self.request = request
        self._script = script
        self._failure = failure
        self._mid_failure = mid_failure
        self.closed = False
        prefill = None
        if request.sampling.prompt_logprobs:
            prefill = [TokenInfo(id=1, text="<s>", logprob=None), TokenInfo(id=7, text="hi", logprob=-0.5)]
        # One "token" per prompt character, so batched prompts of different lengths count differently.
        prompt_tokens = len(request.prompt) if request.prompt else 2
        self._accepted = Accepted(request_id=request.request_id, prompt_tokens=prompt_tokens, prefill=prefill)

    @property
    def accepted(self) -> Accepted:
        if self._failure is not None:
            raise self._failure
        return self._accepted

    def __iter__(self) -> Iterator[Delta]:
        for index, delta in enumerate(self._script):
            if self._mid_failure is not None and index == 1:
                raise self._mid_failure
            yield delta

    def batches(self) -> Iterator[list[Delta]]:
        """One delta per batch (GenerationStream groups those already waiting)."""
        for delta in self:
            yield [delta]

    def close(self) -> None:
        self.closed = True


def script_for(request: GenerateRequest) -> list[Delta]:
    """Tokens from WORDS up to max_new_tokens; a stop string ends it early, else length."""
    limit = request.sampling.max_new_tokens or len(WORDS)
    top_n = request.sampling.logprobs or 0
    deltas: list[Delta] = []
    for index, word in enumerate(WORDS[:limit]):
        if word.strip() in request.sampling.stop:
            # The model process cuts the stop string from the text it sends.
            deltas.append(Delta(request_id=request.request_id, text=word.replace(word.strip(), ""),
                                completion_tokens=index,
                                finish_reason="stop", stop_sequence=word.strip()))
            return deltas
        top = [TopToken(id=100 + k, text=f"alt{k}", logprob=-1.0 - k) for k in range(top_n)]
        token = TokenInfo(id=10 + index, text=word, logprob=-0.25, special=False, top=top or None)
        last = index == min(limit, len(WORDS)) - 1
        finish = ("length" if limit < len(WORDS) else "eos") if last else None
        deltas.append(Delta(request_id=request.request_id, text=word, tokens=[token],
                            completion_tokens=index + 1, finish_reason=finish))
    return deltas


class FakeGateway(FakeAdapters):
    """The gateway API the protocols use, answering from a script."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.requests: list[GenerateRequest] = []
        self.streams: list[FakeStream] = []
        self.failure: BerthError | None = None
        self.mid_failure: BerthError | None = None

    def resolve_model(self, name: str | None) -> str:
        if name in (None, "", "tgi", "tiny"):
            return "tiny"
        from berth_server.errors import NotFound

        raise NotFound(f"model '{name}' not found")

    def generate(self, request: GenerateRequest) -> FakeStream:
        self.requests.append(request)
        stream = FakeStream(request, script_for(request), self.failure, self.mid_failure)
        self.streams.append(stream)
        return stream

    def tokenize(self, uid: str, text: str | None = None, messages: Any = None,
                 add_special_tokens: bool = True) -> list[TokenSpan]:
        if not text:
            raise InvalidRequest("nothing to tokenize")
        spans, start = [], 0
        for index, word in enumerate(text.split(" ")):
            spans.append(TokenSpan(id=index, text=word, start=start, stop=start + len(word)))
            start += len(word) + 1
        return spans

    def describe(self, uid: str) -> ModelDescription:
        return ModelDescription(uid=uid, model_name="tiny", model_type="LLM", source="/models/tiny",
                                engine="transformers", device="cpu", dtype="float32",
                                abilities=["chat", "generate"], max_input_tokens=1024, max_total_tokens=2048,
                                context_length=2048, max_batch_size=8, pid=1)

    def default_ready(self) -> bool:
        return self.ready


def test_fake_script_honours_max_new_tokens_and_stop() -> None:
    """The fake itself: a limit gives 'length', a stop string gives 'stop'."""
    from berth_server.canonical import SamplingParams

    limited = script_for(GenerateRequest(request_id="a", model="m", sampling=SamplingParams(max_new_tokens=2)))
    assert [d.finish_reason for d in limited] == [None, "length"]
    stopped = script_for(GenerateRequest(request_id="b", model="m", sampling=SamplingParams(stop=("again",))))
    assert stopped[-1].finish_reason == "stop" and stopped[-1].stop_sequence == "again"
