"""TGI service: canonical streams folded into TGI replies (/generate, /) or TGI token events (/generate_stream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, has_request_context, request

from berth_server.canonical import Accepted, TokenInfo
from berth_server.errors import InvalidRequest
from berth_server.frontend.generation import Folded, Generation, start_generation, wire_finish_reason
from berth_server.frontend.sse import sse_event, sse_response
from berth_server.frontend.state import FrontendState
from berth_server.frontend.streams import new_request_id
from berth_server.protocols.tgi.schemas import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_N_TOKENS,
    GenerateBody,
    TokenizeBody,
)


def token_json(token: TokenInfo) -> dict[str, Any]:
    """A generated token as TGI's Token {id, text, logprob, special}."""
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def top_tokens_json(token: TokenInfo) -> list[dict[str, Any]]:
    """The alternatives at one position as TGI Tokens."""
    return [{"id": t.id, "text": t.text, "logprob": t.logprob, "special": False} for t in token.top or []]


def prefill_json(accepted: Accepted) -> list[dict[str, Any]]:
    """Prompt tokens as TGI's PrefillToken list (empty unless decoder_input_details was asked)."""
    return [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in accepted.prefill or []]


def generated_text(body: GenerateBody, folded: Folded) -> str:
    """TGI's generated_text: the matched stop sequence kept, the prompt in front when return_full_text."""
    text = folded.text
    if folded.stop_sequence and not text.endswith(folded.stop_sequence):
        text += folded.stop_sequence
    return body.inputs + text if body.parameters.return_full_text else text


class TgiRequests:
    """TGI bodies turned into canonical requests on one model, and the metrics that count them."""

    def __init__(self, state: FrontendState, bodies: list[GenerateBody], uid: str) -> None:
        for body in bodies:
            body.check()
        self.state = state
        self.bodies = bodies
        self.uid = uid
        self.requests = [body.to_canonical(new_request_id(), uid) for body in bodies]

    def start(self) -> Generation:
        """Start them all and await acceptance (so validation errors are HTTP errors)."""
        environ = request.environ if has_request_context() else None
        return start_generation(self.state.gateway, self.requests, environ)

    def count(self, generation: Generation, folded: Folded) -> None:
        """Count one finished generation's tokens."""
        self.state.metrics.count_tokens(self.uid, generation.prompt_tokens, folded.completion_tokens)

    def seed(self, index: int) -> int | None:
        """The seed TGI reports: the one sampled with, None when greedy."""
        sampling = self.requests[index].sampling
        return sampling.seed if not sampling.greedy else None


def replies(state: FrontendState, bodies: list[GenerateBody], uid: str) -> list[dict[str, Any]]:
    """Fold each body's generation into TGI's GenerateResponse {generated_text, details?} (started together)."""
    batch = TgiRequests(state, bodies, uid)
    generation = batch.start()
    out = []
    for index, (body, folded, accepted) in enumerate(zip(bodies, generation.fold(), generation.accepted,
                                                         strict=True)):
        batch.count(generation, folded)
        reply: dict[str, Any] = {"generated_text": generated_text(body, folded)}
        if body.parameters.details:
            details: dict[str, Any] = {
                "finish_reason": wire_finish_reason(folded.finish_reason, "tgi"),
                "generated_tokens": folded.completion_tokens,
                "seed": batch.seed(index),
                "prefill": prefill_json(accepted),
                "tokens": [token_json(t) for t in folded.tokens],
                "best_of_sequences": None,
            }
            if body.parameters.top_n_tokens:
                details["top_tokens"] = [top_tokens_json(t) for t in folded.tokens]
            reply["details"] = details
        out.append(reply)
    return out


def stream(state: FrontendState, body: GenerateBody, uid: str) -> Response:
    """TGI token events as SSE, one chunk per group of deltas; no [DONE] (TGI's stream ends at close)."""
    batch = TgiRequests(state, [body], uid)
    generation = batch.start()
    chunks = ("".join(sse_event(event) for event in events) for events in event_batches(batch, generation))
    return sse_response(chunks, on_close=generation.close)


def event_batches(batch: TgiRequests, generation: Generation) -> Iterator[list[dict[str, Any]]]:
    """TGI StreamResponse events, grouped per delta; the last carries generated_text and details."""
    body = batch.bodies[0]
    folded = Folded()
    index = 0
    want_top = bool(body.parameters.top_n_tokens)
    for delta in generation.deltas():
        folded.add(delta)
        tokens = list(delta.tokens or [])
        if not tokens and delta.finish_reason is None:
            continue
        if not tokens:
            # The final delta brought no token (a stop sequence was cut): close with an empty special one.
            tokens = [TokenInfo(id=0, text="", logprob=None, special=True)]
        events = []
        for position, token in enumerate(tokens):
            index += 1
            last = delta.finish_reason is not None and position == len(tokens) - 1
            details = None
            if last:
                batch.count(generation, folded)
                details = {"finish_reason": wire_finish_reason(folded.finish_reason, "tgi"),
                           "generated_tokens": folded.completion_tokens, "seed": batch.seed(0),
                           "input_length": generation.prompt_tokens}
            events.append({
                "index": index,
                "token": token_json(token),
                "top_tokens": top_tokens_json(token) if want_top else None,
                "generated_text": generated_text(body, folded) if last else None,
                "details": details,
            })
        yield events


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
