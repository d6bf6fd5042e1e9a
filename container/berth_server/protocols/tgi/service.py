"""TGI service: canonical streams in, TGI token events out; /generate's whole reply is the fold of the same events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from berth_server.canonical import Accepted, TokenInfo
from berth_server.client.generation import FinishReasons, Generation, start_generation
from berth_server.client.state import FrontendState
from berth_server.client.streams import new_request_id
from berth_server.errors import BerthError, InvalidRequest
from berth_server.protocols.reply import FoldRules, WireReply
from berth_server.protocols.tgi.headers import TgiTimings
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


def generated_text(body: GenerateBody, text: str, stop_sequence: str | None) -> str:
    """TGI's generated_text: the matched stop sequence kept, the prompt in front when return_full_text."""
    if stop_sequence and not text.endswith(stop_sequence):
        text += stop_sequence
    return body.inputs + text if body.parameters.return_full_text else text


# Each event carries its real tokens under whole-only keys: the whole reply's details.tokens are
# their fold, and the empty token that closes a stream cut by a stop sequence is not among them.
TGI_RULES = FoldRules()
# TGI has only length/eos_token/stop_sequence; an aborted request ends as "length", a failed one is an error.
FINISH_REASONS = FinishReasons({"length": "length", "eos": "eos_token", "stop": "stop_sequence", "abort": "length"},
                               unknown="length")


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
        return start_generation(self.state.gateway, self.requests)

    def seed(self, index: int) -> int | None:
        """The seed TGI reports: the one sampled with, None when greedy."""
        sampling = self.requests[index].sampling
        return sampling.seed if not sampling.greedy else None


def reply(state: FrontendState, bodies: list[GenerateBody], uid: str, stream: bool,
          single: bool = False) -> WireReply:
    """TGI's reply to one or more bodies (started together, so the model batches them).

    Streamed: token events of bodies[0]. Whole: a list with one {generated_text, details?} per body
    (the object alone when `single`, as /generate answers), each the fold of that body's token events.
    The reply carries TGI's x-* headers (protocols/tgi/headers.py).
    """
    timings = TgiTimings(compute_type=_compute_type(state.gateway, uid),
                         characters=sum(len(body.inputs) for body in bodies))
    batch = TgiRequests(state, bodies, uid)
    generation = batch.start()
    timings.mark_accepted()
    parts = [token_events(batch, generation, index) for index in range(len(bodies))]

    def whole(folded: list[dict[str, Any]]) -> Any:
        replies = [_whole_reply(body, events) for body, events in zip(bodies, folded, strict=True)]
        return replies[0] if single else replies

    return WireReply(parts, TGI_RULES, whole, stream=stream, on_close=generation.close,
                     headers=timings.stream_headers(), whole_headers=timings.whole_headers)


def _compute_type(gateway: Any, uid: str) -> str | None:
    """TGI's x-compute-type: the device the model runs on ("cpu", "cuda", ...), as it reports itself."""
    try:
        return gateway.describe(uid).device or None
    except BerthError:
        return None


def _whole_reply(body: GenerateBody, folded: dict[str, Any]) -> dict[str, Any]:
    """Folded token events as TGI's GenerateResponse."""
    reply: dict[str, Any] = {"generated_text": folded.get("generated_text") or ""}
    if body.parameters.details:
        final = folded.get("details") or {}
        details: dict[str, Any] = {
            "finish_reason": final.get("finish_reason"), "generated_tokens": final.get("generated_tokens"),
            "seed": final.get("seed"), "prefill": folded.get("_prefill", []), "tokens": folded.get("_tokens", []),
            "best_of_sequences": None,
        }
        if body.parameters.top_n_tokens:
            details["top_tokens"] = folded.get("_top_tokens", [])
        reply["details"] = details
    return reply


def token_events(batch: TgiRequests, generation: Generation, index: int) -> Iterator[list[dict[str, Any]]]:
    """TGI StreamResponse events of body `index`, one per token, grouped per delta (one write each);
    the last carries generated_text and details."""
    body = batch.bodies[index]
    want_top = bool(body.parameters.top_n_tokens)
    text, position, stop_sequence = "", 0, None
    for delta in generation.deltas(index):
        text += delta.text
        tokens = list(delta.tokens or [])
        if not tokens and delta.finish_reason is None:
            continue
        closing = not tokens
        if closing:
            # The final delta brought no token (a stop sequence was cut): close with an empty special one.
            tokens = [TokenInfo(id=0, text="", logprob=None, special=True)]
        group = []
        for offset, token in enumerate(tokens):
            position += 1
            event: dict[str, Any] = {"index": position, "token": token_json(token),
                                     "top_tokens": top_tokens_json(token) if want_top else None,
                                     "generated_text": None, "details": None,
                                     "_tokens": [] if closing else [token_json(token)],
                                     "_top_tokens": [] if closing or not want_top else [top_tokens_json(token)]}
            if position == 1:
                event["_prefill"] = prefill_json(generation.accepted[index])
            if delta.finish_reason is not None and offset == len(tokens) - 1:
                stop_sequence = delta.stop_sequence
                accepted = generation.accepted[index]
                batch.state.metrics.count_tokens(batch.uid, accepted.prompt_tokens, delta.completion_tokens)
                event["generated_text"] = generated_text(body, text, stop_sequence)
                event["details"] = {"finish_reason": FINISH_REASONS.word(delta.finish_reason),
                                    "generated_tokens": delta.completion_tokens, "seed": batch.seed(index),
                                    "input_length": accepted.prompt_tokens}
            group.append(event)
        yield group


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
