"""The one internal request every protocol is translated into, and the deltas that come back.

These msgspec structs cross the frontend <-> model-process boundary, so they hold plain data only
and import nothing heavy. Protocol adapters build a GenerateRequest; the model process answers
with Accepted, then Deltas, each possibly carrying a finish_reason, or a Failure at any point.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Canonical finish reasons. Adapters map them: OpenAI "stop"/"length"; TGI
# "eos_token"/"stop_sequence"/"length".
FinishReason = Literal["length", "eos", "stop", "abort", "error"]
# TGI's error_type vocabulary, which also decides the HTTP status when a failure crosses IPC.
FailureType = Literal["validation", "overloaded", "generation", "not_found", "incomplete_generation"]


ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar", "structural_tag"]


class Constraint(msgspec.Struct, frozen=True, kw_only=True):
    """What the output must match, enforced while decoding (xgrammar, or vLLM's structured outputs).

    json_schema and structural_tag hold JSON text (so equal constraints compare and cache equal);
    regex a pattern; grammar EBNF/GBNF text; choice the allowed strings; json_object any JSON object.
    `param` names the wire field it came from, so a constraint that cannot compile is a 4xx naming it.
    """

    kind: ConstraintKind
    value: str = ""
    choices: tuple[str, ...] = ()
    param: str = "response_format"


# A temperature below this decodes greedily: dividing logits by it overflows to inf (vLLM's own threshold).
GREEDY_BELOW_TEMPERATURE = 1e-5


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request decoding knobs; defaults mean 'off'."""

    max_new_tokens: int | None = None  # None: up to the model's context limit
    greedy: bool = False  # TGI do_sample=false or temperature 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_new_tokens: int = 0
    # None: no per-token logprobs. 0: the sampled token's logprob. N: plus the top N alternatives.
    logprobs: int | None = None
    prompt_logprobs: bool = False  # TGI decoder_input_details
    skip_special_tokens: bool = True
    constraint: Constraint | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), biases in [-100, 100]
    allowed_token_ids: tuple[int, ...] | None = None  # None: every token; else only these
    bad_words: tuple[str, ...] = ()  # words never generated (tokenized by the model process)

    @property
    def takes_argmax(self) -> bool:
        """Whether every engine decodes this greedily: asked so, or a temperature too small to divide by."""
        return self.greedy or self.temperature < GREEDY_BELOW_TEMPERATURE


def temperature_fields(temperature: float | None) -> dict[str, Any]:
    """SamplingParams' greedy/temperature for a wire's `temperature`: left out is 1, 0 decodes greedily."""
    chosen = 1.0 if temperature is None else temperature
    return {"greedy": chosen == 0.0, "temperature": chosen if chosen > 0 else 1.0}


class GenerateRequest(msgspec.Struct, kw_only=True):
    """One generation, whatever protocol it came in on. Exactly one of messages/prompt/prompt_token_ids."""

    request_id: str
    model: str
    sampling: SamplingParams = SamplingParams()
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    chat_template_kwargs: dict[str, Any] = {}
    enable_thinking: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    truncate: int | None = None  # TGI: keep only the last N prompt tokens
    add_special_tokens: bool | None = None  # None: True for prompts, False for rendered chat
    token_details: bool = False  # per-token TokenInfo in every Delta (TGI streams/details, logprobs)
    split_reasoning: bool = False  # chat: route text between reasoning tags to Delta.reasoning
    adapter: str | None = None  # a LoRA adapter registered on `model`; None: the base model
    # Choices (OpenAI's n): the prompt is templated, tokenized and its constraint compiled once, then
    # generated n times; choice i samples with seed + i. Each Delta names its choice.
    n: int = 1
    return_prompt_text: bool = False  # Accepted.prompt_text is sent only when asked (completions echo)
    # Reasoning tokens after which the model process closes the reasoning block itself (Anthropic's
    # thinking.budget_tokens): the model then answers from what it thought so far. None: no limit.
    thinking_budget: int | None = None
    # A SageMaker stateful session (X-Amzn-SageMaker-Session-Id) the request belongs to: the model process
    # checks it is open, and the engine may keep the session's prefix cached for its next turn.
    session_id: str | None = None


class TopToken(msgspec.Struct, array_like=True, frozen=True):
    """One alternative at a position: id, its text, its logprob."""

    id: int
    text: str
    logprob: float


class TokenInfo(msgspec.Struct, array_like=True):
    """One generated (or prompt) token, as TGI details and OpenAI logprobs need it."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False
    top: list[TopToken] | None = None


class Accepted(msgspec.Struct, tag="accepted", kw_only=True):
    """First reply: the prompt was rendered, tokenized and admitted. Before it, failures are 4xx."""

    request_id: str
    prompt_tokens: int
    prefill: list[TokenInfo] | None = None  # prompt tokens with logprobs when prompt_logprobs was asked
    prompt_text: str | None = None  # the rendered prompt, when the request asked for it (completions echo)


class Delta(msgspec.Struct, tag="delta", kw_only=True):
    """New output since the last delta. The last one for a request has finish_reason set."""

    request_id: str
    choice: int = 0  # which of the request's n choices it belongs to
    text: str = ""
    reasoning: str = ""
    tokens: list[TokenInfo] | None = None
    completion_tokens: int = 0  # cumulative count of generated tokens
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None  # which stop string ended it, when finish_reason == "stop"


class ErrorRecord(msgspec.Struct, kw_only=True):
    """A typed error as it crosses processes (model process or launcher -> frontend), the one such record.

    errors.record_of builds it from a BerthError; errors.from_record rebuilds the BerthError. HTTP
    bodies, SSE error events and control replies all come from the rebuilt error.
    """

    message: str
    error_type: FailureType | str = "generation"
    status: int = 500  # the HTTP status; 500 when only error_type says what it was
    param: str | None = None


class Failure(ErrorRecord, tag="failure", kw_only=True):
    """The request cannot go on: the error record, for one request (in its stream, or before it starts)."""

    request_id: str


ModelEvent = Accepted | Delta | Failure


# The tool-call markups Berth parses (protocols/tool_calls.py holds one parser per name). Settings
# and launch keys check a name against this list, so the core never imports a protocol.
TOOL_CALL_PARSERS: tuple[str, ...] = ("deepseek_v3", "hermes", "llama3_json", "mistral")


def check_parser_name(name: str | None) -> str | None:
    """`name` if it is a known tool-call parser (or None); ValueError listing the known ones otherwise."""
    if name is not None and name not in TOOL_CALL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; use one of {', '.join(TOOL_CALL_PARSERS)}")
    return name


# Seeds are signed 64-bit (the range every engine takes); choice i of a seeded request samples with seed + i.
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed choice `choice` samples with: seed + choice folded back into the signed 64-bit range."""
    return None if seed is None else (seed + choice - MIN_SEED) % 2**64 + MIN_SEED
