"""SageMaker /invocations body shapes: which protocol a body speaks, and the TGI batch form."""

from __future__ import annotations

from typing import Any, Literal

from berth_server.errors import InvalidRequest
from berth_server.protocols.tgi.schemas import GenerateBody, ParametersBody

Shape = Literal["chat", "completion", "tgi"]

ACCEPTED_SHAPES = (
    '{"messages": [...]} (OpenAI chat), {"prompt": ...} (OpenAI completion) '
    'or {"inputs": "..." | ["...", ...], "parameters": {...}} (TGI)'
)
# A SageMaker batch of TGI inputs is bounded like TGI's max_client_batch_size.
MAX_BATCH_INPUTS = 32


def shape_of(body: dict[str, Any], messages_api_enabled: bool) -> Shape:
    """Decide the protocol from the body's keys, as TGI >= 2.4 does on /invocations.

    The shape decides in every mode. MESSAGES_API_ENABLED only breaks the tie for a body that has
    both "messages" and "inputs": chat wins when it is on, TGI (TGI's own precedence) when it is off.
    """
    has_messages = "messages" in body
    has_inputs = "inputs" in body
    if has_messages and has_inputs:
        return "chat" if messages_api_enabled else "tgi"
    if has_inputs:
        return "tgi"
    if has_messages:
        return "chat"
    if "prompt" in body:
        return "completion"
    keys = ", ".join(sorted(body)) or "none"
    raise InvalidRequest(f"unrecognised /invocations body (keys: {keys}); send {ACCEPTED_SHAPES}")


class InvocationTgiBody(ParametersBody):
    """A TGI-shaped invocation: inputs may be one string or a batch of strings."""

    inputs: str | list[str]

    def bodies(self) -> list[GenerateBody]:
        """One TGI GenerateBody per input, each validated."""
        batch = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
        if not batch:
            raise InvalidRequest("`inputs` cannot be an empty list", param="inputs")
        if len(batch) > MAX_BATCH_INPUTS:
            raise InvalidRequest(f"`inputs` holds {len(batch)} prompts; the limit is {MAX_BATCH_INPUTS}")
        if self.stream and len(batch) > 1:
            raise InvalidRequest("streaming takes one input, not a batch", param="stream")
        out = [GenerateBody(inputs=text, parameters=self.parameters, stream=self.stream) for text in batch]
        for body in out:
            body.check()
        return out

    @property
    def is_batch(self) -> bool:
        """True when inputs was a list (the reply is then one entry per input)."""
        return isinstance(self.inputs, list)
