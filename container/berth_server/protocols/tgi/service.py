"""TGI service: canonical streams folded into TGI replies (/generate, /) or TGI token events (/generate_stream)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from berth_server.canonical import Accepted, Delta, TokenInfo
from berth_server.errors import GenerationFailed, InvalidRequest
from berth_server.frontend.gateway import new_request_id
from berth_server.frontend.sse import sse_event
from berth_server.protocols.tgi.schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_N_TOKENS,
    GenerateBody,
    TokenizeBody,
)

_FINISH = {"length": "length", "eos": "eos_token", "stop": "stop_sequence", "abort": "length"}


def finish_reason_tgi(reason: str | None) -> str:
    """Canonical finish reason -> TGI's (length | eos_token | stop_sequence)."""
    if reason == "error":
        raise GenerationFailed("generation ended with an error")
    return _FINISH.get(reason or "length", "length")


def token_json(token: TokenInfo) -> dict[str, Any]:
    """A generated token as TGI's Token {id, text, logprob, special}."""
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def top_tokens_json(token: TokenInfo) -> list[dict[str, Any]]:
    """The alternatives at one position as TGI Tokens."""
    return [{"id": t.id, "text": t.text, "logprob": t.logprob, "special": False} for t in token.top or []]


def prefill_json(accepted: Accepted) -> list[dict[str, Any]]:
    """Prompt tokens as TGI's PrefillToken list (empty unless decoder_input_details was asked)."""
    return [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in accepted.prefill or []]


@dataclass
class Fold:
    """What a finished canonical stream adds up to."""

    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str = "length"
    generated_tokens: int = 0

    def add(self, delta: Delta) -> None:
        """Fold one delta in."""
        self.text += delta.text
        self.tokens.extend(delta.tokens or [])
        self.generated_tokens = max(self.generated_tokens, delta.completion_tokens, len(self.tokens))
        if delta.finish_reason is not None:
            self.finish_reason = finish_reason_tgi(delta.finish_reason)
            # TGI keeps the matched stop sequence in generated_text.
            if delta.stop_sequence and not self.text.endswith(delta.stop_sequence):
                self.text += delta.stop_sequence


class TgiGeneration:
    """One TGI generation over a gateway stream: fold it (non-streaming) or relay it as token events."""

    def __init__(self, gateway: Any, body: GenerateBody, uid: str, metrics: Any = None) -> None:
        body.check()
        self.body = body
        self.uid = uid
        self.metrics = metrics  # frontend.metrics.FrontendMetrics, or None
        self.request = body.to_canonical(new_request_id(), uid)
        self.stream = gateway.generate(self.request)
        try:
            # Blocks for the model's verdict on the prompt so validation errors are HTTP errors.
            self.accepted: Accepted = self.stream.accepted
        except BaseException:
            self.stream.close()
            raise

    def _count(self, fold: Fold) -> None:
        if self.metrics is not None:
            self.metrics.count_tokens(self.uid, self.accepted.prompt_tokens, fold.generated_tokens)

    def _full_text(self, text: str) -> str:
        return self.body.inputs + text if self.body.parameters.return_full_text else text

    def _seed(self) -> int | None:
        return self.request.sampling.seed if not self.request.sampling.greedy else None

    def reply(self) -> dict[str, Any]:
        """Fold the whole stream into TGI's GenerateResponse {generated_text, details?}."""
        fold = Fold()
        try:
            for delta in self.stream:
                fold.add(delta)
        finally:
            self.stream.close()
        self._count(fold)
        out: dict[str, Any] = {"generated_text": self._full_text(fold.text)}
        if self.body.parameters.details:
            details: dict[str, Any] = {
                "finish_reason": fold.finish_reason,
                "generated_tokens": fold.generated_tokens,
                "seed": self._seed(),
                "prefill": prefill_json(self.accepted),
                "tokens": [token_json(t) for t in fold.tokens],
                "best_of_sequences": None,
            }
            if self.body.parameters.top_n_tokens:
                details["top_tokens"] = [top_tokens_json(t) for t in fold.tokens]
            out["details"] = details
        return out

    def event_batches(self) -> Iterator[list[dict[str, Any]]]:
        """TGI StreamResponse events, grouped per delta; the last carries generated_text and details.

        Grouping lets the view write all tokens that arrived together in one chunk (FINDINGS: half the cost).
        Closes the stream when done, failed or abandoned.
        """
        fold = Fold()
        index = 0
        want_top = bool(self.body.parameters.top_n_tokens)
        try:
            for delta in self.stream:
                fold.add(delta)
                tokens = list(delta.tokens or [])
                if not tokens and delta.finish_reason is None:
                    continue
                if not tokens:
                    # The final delta brought no token (a stop sequence was cut): close with an empty special one.
                    tokens = [TokenInfo(id=0, text="", logprob=None, special=True)]
                batch = []
                for position, token in enumerate(tokens):
                    index += 1
                    last = delta.finish_reason is not None and position == len(tokens) - 1
                    if last:
                        self._count(fold)
                    batch.append({
                        "index": index,
                        "token": token_json(token),
                        "top_tokens": top_tokens_json(token) if want_top else None,
                        "generated_text": self._full_text(fold.text) if last else None,
                        "details": self._stream_details(fold) if last else None,
                    })
                yield batch
        finally:
            self.stream.close()

    def events(self) -> Iterator[dict[str, Any]]:
        """TGI StreamResponse events one by one."""
        for batch in self.event_batches():
            yield from batch

    def sse_chunks(self) -> Iterator[str]:
        """Framed SSE text, one chunk per delta (no [DONE]: TGI streams end when the connection closes)."""
        for batch in self.event_batches():
            yield "".join(sse_event(event) for event in batch)

    def _stream_details(self, fold: Fold) -> dict[str, Any]:
        return {
            "finish_reason": fold.finish_reason,
            "generated_tokens": fold.generated_tokens,
            "seed": self._seed(),
            "input_length": self.accepted.prompt_tokens,
        }


def tokenize(gateway: Any, uid: str, body: TokenizeBody) -> list[dict[str, Any]]:
    """TGI /tokenize: [{id, text, start, stop}] for the inputs."""
    if not body.inputs:
        raise InvalidRequest("`inputs` cannot be empty", param="inputs")
    spans = gateway.tokenize(uid, text=body.inputs, add_special_tokens=body.add_special_tokens)
    return [{"id": s.id, "text": s.text, "start": s.start, "stop": s.stop} for s in spans]


def info(gateway: Any, settings: Any, uid: str, version: str) -> dict[str, Any]:
    """TGI /info built from the default model's description."""
    described = gateway.describe(uid)
    return {
        "model_id": described.model_name or uid,
        "model_sha": None,
        "model_dtype": described.dtype,
        "model_device_type": described.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": described.max_input_tokens,
        "max_total_tokens": described.max_total_tokens,
        "max_input_length": described.max_input_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 4,
        "max_top_n_tokens": MAX_TOP_N_TOKENS,
        "max_new_tokens_default": DEFAULT_MAX_NEW_TOKENS,
        "router": "berth",
        "version": version,
        "sha": None,
        "docker_label": None,
    }
