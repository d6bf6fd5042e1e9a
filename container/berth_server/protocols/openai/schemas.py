"""OpenAI wire schemas (pydantic, one base, no I/O); each request converts itself to GenerateRequests."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from berth_server.canonical import Constraint, GenerateRequest, SamplingParams, temperature_fields
from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds, constraints
from berth_server.protocols.bounds import (
    ChoiceCount,
    LogitBias,
    Name,
    PositiveTokenCount,
    PromptTokenIds,
    Seed,
    StopList,
    StopString,
    StopTokenIds,
    TokenCount,
    TokenId,
    Tools,
    TopK,
)
from berth_server.protocols.openai.refused import CHAT_ONLY, unsupported_field
from berth_server.protocols.tool_calls import keeping_special_tokens
from berth_server.protocols.tool_syntax import ToolChoice, check_tool_choice, tool_constraint
from berth_server.protocols.wire import parse  # noqa: F401 - re-exported for the blueprints

M = TypeVar("M", bound="OpenAIBase")


class OpenAIBase(BaseModel):
    """Every OpenAI schema: unknown keys are ignored (xinference-client merges its own at top level)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class ChatMessage(OpenAIBase):
    """One chat message."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: Name | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=bounds.MAX_TOOLS)
    tool_call_id: Name | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # vLLM's current name for reasoning_content; either is accepted

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else ():
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part type '{part.get('type')}' is not supported (only 'text')")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a '{self.role}' message needs content")
        return self

    def to_template(self) -> dict[str, Any]:
        """The dict the chat template sees (content parts joined into one string)."""
        content = self.content
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content}
        for key in ("name", "tool_calls", "tool_call_id", "reasoning_content"):
            value = getattr(self, key)
            if value is not None:
                message[key] = value
        if self.reasoning is not None and self.reasoning_content is None:
            message["reasoning_content"] = self.reasoning
        return message


class StreamOptions(OpenAIBase):
    """stream_options."""

    include_usage: bool = False


class SamplingFields(OpenAIBase):
    """Fields chat and completions share."""

    model: Name | None = None
    lora_name: Name | None = None  # xinference-client's generate_config key for an adapter
    max_tokens: PositiveTokenCount | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: TopK | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: Seed | None = None
    stop: StopString | StopList | None = None
    stop_token_ids: StopTokenIds | None = None
    n: ChoiceCount | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = False
    min_tokens: TokenCount | None = None
    skip_special_tokens: bool | None = True
    logit_bias: LogitBias | None = None
    user: Name | None = None
    allowed_token_ids: Annotated[list[TokenId], Field(min_length=1, max_length=bounds.MAX_PROMPT_TOKEN_IDS)] | None = None
    bad_words: StopList | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    truncate_prompt_tokens: PositiveTokenCount | None = None
    return_tokens_as_token_ids: bool | None = False

    _refused_here: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, body: Any) -> Any:
        name = unsupported_field(body, cls._refused_here)
        if name is not None:
            raise ValueError(f"{name} is not supported by Berth (it would be ignored); leave it out")
        return body

    @field_validator("guided_decoding_backend")
    @classmethod
    def _xgrammar_only(cls, value: str | None) -> str | None:
        if value not in (None, "auto", "xgrammar"):
            raise ValueError(f"backend {value!r} is not available; Berth decodes with xgrammar")
        return value

    def logit_biases(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs, each bias clamped to [-100, 100] as OpenAI does, once for
        every engine; keys must be token ids (OpenAI sends them as strings)."""
        pairs = []
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise InvalidRequest(f"logit_bias keys must be token ids, not {key!r}", param="logit_bias") from None
            pairs.append((token, max(-100.0, min(100.0, float(value)))))
        return tuple(pairs)

    def output_constraint(self) -> Constraint | None:
        """The one output constraint from response_format, structured_outputs or guided_* (400 if several)."""
        return constraints.one_of(
            constraints.response_format(self.response_format),
            constraints.structured_outputs(self.structured_outputs),
            constraints.guided({"guided_json": self.guided_json, "guided_regex": self.guided_regex,
                                "guided_choice": self.guided_choice, "guided_grammar": self.guided_grammar}),
        )

    @property
    def choices(self) -> int:
        """How many completions to generate."""
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_new_tokens: int | None, logprobs: int | None,
                 constraint: Constraint | None = None) -> SamplingParams:
        """SamplingParams of the request (choice i samples with seed + i in the model process)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            **temperature_fields(self.temperature),
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=self.seed,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos),
            min_new_tokens=self.min_tokens or 0,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens is not False,
            constraint=constraint,
            logit_bias=self.logit_biases(),
            allowed_token_ids=None if self.allowed_token_ids is None else tuple(self.allowed_token_ids),
            bad_words=tuple(self.bad_words or ()),
        )


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=bounds.MAX_MESSAGES)
    max_completion_tokens: PositiveTokenCount | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    tools: Tools | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = True
    _refused_here: ClassVar[dict[str, tuple[Any, ...]]] = CHAT_ONLY
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def tool_choice_mode(self) -> ToolChoice:
        """tool_choice checked against tools."""
        return check_tool_choice(self.tools, self.tool_choice)

    def thinking(self) -> bool | None:
        """enable_thinking from the top level or from xinference-client's chat_template_kwargs."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        kwargs = self.chat_template_kwargs or {}
        for key in ("enable_thinking", "thinking"):
            if isinstance(kwargs.get(key), bool):
                return kwargs[key]
        return None

    def to_generate_requests(self, uid: str, request_id: str, tool_parser: str | None = None,
                             adapter: str | None = None) -> list[GenerateRequest]:
        """One canonical request carrying all n choices (templated and tokenized once, in the model process).

        A required or named tool_choice becomes a constraint in the tool_parser's call syntax.
        """
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        max_new = self.max_completion_tokens or self.max_tokens
        messages = [message.to_template() for message in self.messages]
        choice = self.tool_choice_mode()
        forced = tool_constraint(self.tools, choice, tool_parser, self.parallel_tool_calls is not False)
        constraint = constraints.one_of(self.output_constraint(), forced)
        return [GenerateRequest(
            request_id=request_id,
            model=uid,
            sampling=keeping_special_tokens(self.sampling(max_new, logprobs, constraint), tool_parser, choice),
            messages=messages,
            chat_template_kwargs=dict(self.chat_template_kwargs or {}),
            enable_thinking=self.thinking(),
            add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message,
            tools=self.tools if choice.mode != "none" else None,
            truncate=self.truncate_prompt_tokens,
            token_details=logprobs is not None,
            split_reasoning=True,
            adapter=adapter,
            n=self.choices,
        )]


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=bounds.MAX_N)] | PromptTokenIds \
        | Annotated[list[PromptTokenIds], Field(min_length=1, max_length=bounds.MAX_N)]
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    best_of: ChoiceCount | None = None

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.choices:
            raise ValueError("best_of other than n is not supported (Berth returns every sample it draws)")
        return self

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string or a list of token ids (a list of either is answered in order)."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [[int(i) for i in value]]  # type: ignore[arg-type]
        return [item if isinstance(item, str) else [int(i) for i in item] for item in value]  # type: ignore[union-attr]

    def to_generate_requests(self, uid: str, request_id: str, adapter: str | None = None) -> list[GenerateRequest]:
        """One canonical request per prompt, each carrying its n choices: choice index = prompt * n + i."""
        constraint = self.output_constraint()
        return [
            GenerateRequest(
                request_id=f"{request_id}-{p}",
                model=uid,
                sampling=self.sampling(self.max_tokens or 16, self.logprobs, constraint),
                prompt=prompt if isinstance(prompt, str) else None,
                prompt_token_ids=None if isinstance(prompt, str) else prompt,
                truncate=self.truncate_prompt_tokens,
                token_details=self.logprobs is not None,
                adapter=adapter,
                n=self.choices,
                # echo of a token-id prompt shows its text, which only the model process can render
                return_prompt_text=bool(self.echo) and not isinstance(prompt, str),
            )
            for p, prompt in enumerate(self.prompts())
        ]
