"""Per-request output state: engine steps in, Deltas out (text, reasoning, token details, finish)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

from berth_server.canonical import Delta, FinishReason, TokenInfo, TopToken
from berth_server.engines.base import EngineStep
from berth_server.model_process.detokenizer import IncrementalDetokenizer, StopMatcher
from berth_server.model_process.reasoning import ReasoningSplitter


class Vocabulary(Protocol):
    """What an output stream reads of the model's tokenizer (text_pipeline.TextPipeline provides it)."""

    tokenizer: Any
    special_ids: frozenset[int]

    def token_text(self, token_id: int) -> str:
        """One token's text."""

FINISH: dict[str, FinishReason] = {"eos": "eos", "length": "length", "abort": "abort"}


class OutputStream:
    """Detokenizes, cuts stop strings, splits reasoning and counts tokens for one request."""

    def __init__(self, *, pipeline: Vocabulary, request_id: str, skip_ids: Iterable[int],
                 prompt_ids: list[int], stops: Iterable[str], splitter: ReasoningSplitter | None,
                 details: bool):
        self._pipeline = pipeline
        self.request_id = request_id
        self._detok = IncrementalDetokenizer(pipeline.tokenizer, skip_ids, prompt_ids)
        self._stops = StopMatcher(stops)
        self._splitter = splitter
        self._details = details
        self.completion_tokens = 0
        # completion_tokens when the current reasoning block began (None: not inside one)
        self._thinking_from: int | None = 0 if splitter is not None and splitter.inside else None
        self.finished = False
        self.finish_reason: FinishReason | None = None

    def prefill(self, step: EngineStep, prompt_ids: list[int]) -> list[TokenInfo] | None:
        """Prompt tokens with their logprobs (first None), when the engine sent them."""
        if step.prompt_logprobs is None:
            return None
        return [TokenInfo(id=i, text=self._pipeline.token_text(i), logprob=lp,
                          special=i in self._pipeline.special_ids)
                for i, lp in zip(prompt_ids, step.prompt_logprobs)]

    def process(self, step: EngineStep) -> Delta | None:
        """Turn one engine step into a Delta (None when nothing is ready); sets .finished at the end."""
        pieces: list[str] = []
        stop_hit: str | None = None
        consumed = 0
        for token_id in step.token_ids:
            consumed += 1
            self.completion_tokens += 1
            chunk = self._detok.step(token_id)
            if chunk:
                safe, stop_hit = self._stops.feed(chunk)
                pieces.append(safe)
                if stop_hit is not None:
                    break
        finish: FinishReason | None = "stop" if stop_hit is not None else (
            FINISH.get(step.finish) if step.finish else None)
        if finish is not None and stop_hit is None:
            tail = self._detok.flush()
            safe, stop_hit = self._stops.feed(tail) if tail else ("", None)
            pieces.append(safe)
            if stop_hit is not None:
                finish = "stop"
            else:
                pieces.append(self._stops.flush())
        text, reasoning = self._split("".join(pieces), finish is not None)
        if self._splitter is not None:
            if not self._splitter.inside:
                self._thinking_from = None
            elif self._thinking_from is None:
                self._thinking_from = self.completion_tokens - consumed
        tokens = self._token_infos(step, consumed) if self._details else None
        self.finished = finish is not None
        self.finish_reason = finish
        if not (text or reasoning or tokens or finish):
            return None
        return Delta(request_id=self.request_id, text=text, reasoning=reasoning, tokens=tokens,
                     completion_tokens=self.completion_tokens, finish_reason=finish, stop_sequence=stop_hit)

    @property
    def thinking_tokens(self) -> int | None:
        """Tokens of the reasoning block the output is inside now; None when it is not inside one."""
        return None if self._thinking_from is None else self.completion_tokens - self._thinking_from

    def _split(self, text: str, final: bool) -> tuple[str, str]:
        if self._splitter is None:
            return text, ""
        answer, reasoning = self._splitter.feed(text)
        if final:
            more_answer, more_reasoning = self._splitter.flush()
            answer, reasoning = answer + more_answer, reasoning + more_reasoning
        return answer, reasoning

    def _token_infos(self, step: EngineStep, consumed: int) -> list[TokenInfo] | None:
        """TokenInfo for the tokens this step used (none past a stop string)."""
        if not consumed:
            return None
        text_of = self._pipeline.token_text
        infos = []
        for n, token_id in enumerate(step.token_ids[:consumed]):
            top = None
            if step.top_logprobs is not None and n < len(step.top_logprobs):
                top = [TopToken(int(i), text_of(int(i)), float(lp)) for i, lp in step.top_logprobs[n]]
            logprob = step.logprobs[n] if step.logprobs is not None and n < len(step.logprobs) else None
            if logprob is not None and math.isnan(logprob):
                logprob = None  # the engine does not know it (llama.cpp's merged tokens); JSON has no NaN
            infos.append(TokenInfo(id=token_id, text=text_of(token_id), logprob=logprob,
                                   special=token_id in self._pipeline.special_ids, top=top))
        return infos
