"""A Responses request planned as a chat request, and `truncation: "auto"`: the oldest turns go until the prompt fits.

With truncation "disabled" (the default, as OpenAI's) a prompt over the model's limits is refused with
a 400 (context_length_exceeded). With "auto" the oldest turns are dropped (a turn runs from one user
message to the next, so a function call is never parted from its output) until the prompt, rendered
as its generation will render it, fits the model's input and total limits; instructions always stay.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from berth_server.canonical import GenerateRequest
from berth_server.client.state import FrontendState
from berth_server.protocols.openai.service import ChatPlan, plan_chat
from berth_server.protocols.responses.schemas import ResponseInputs


def _named_for_responses(request: GenerateRequest) -> GenerateRequest:
    """A constraint from text.format names text.format (the chat request calls it response_format)."""
    constraint = request.sampling.constraint
    if constraint is None or not constraint.param.startswith("response_format"):
        return request
    renamed = msgspec.structs.replace(constraint, param="text.format")
    return msgspec.structs.replace(request, sampling=msgspec.structs.replace(request.sampling, constraint=renamed))


def plan_responses(state: FrontendState, body: ResponseInputs, conversation: list[dict[str, Any]],
                   request_id: str) -> ChatPlan:
    """The chat plan of a Responses request over `conversation`."""
    plan = plan_chat(state, body.chat_request(conversation), request_id)
    return dataclasses.replace(plan, requests=[_named_for_responses(r) for r in plan.requests])


def drop_oldest_turn(conversation: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The conversation without its first turn; None when no user message would be left to answer."""
    rest = conversation[1:]
    while rest and not (rest[0]["type"] == "message" and rest[0]["role"] == "user"):
        rest = rest[1:]
    return rest or None


def fit_conversation(state: FrontendState, body: ResponseInputs, conversation: list[dict[str, Any]],
                     request_id: str) -> tuple[ChatPlan, list[dict[str, Any]]]:
    """The plan, over the conversation shortened as truncation "auto" asks (what the model sees)."""
    plan = plan_responses(state, body, conversation, request_id)
    if body.truncation != "auto":
        return plan, conversation
    limits = state.gateway.describe(plan.uid)
    while True:
        request = plan.requests[0]
        count = len(state.gateway.tokenize(plan.uid, chat=request))
        max_new = request.sampling.max_new_tokens
        if count <= limits.max_input_tokens and (max_new is None or count + max_new <= limits.max_total_tokens):
            return plan, conversation
        shorter = drop_oldest_turn(conversation)
        if shorter is None:
            return plan, conversation  # nothing left to drop: the model refuses it as too long
        conversation = shorter
        plan = plan_responses(state, body, conversation, request_id)
