"""OpenAI wire schemas (pydantic, one base, no I/O); each request converts itself to GenerateRequests."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from berth_server.canonical import GenerateRequest, SamplingParams
from berth_server.protocols import bounds
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
    Tools,
    TopK,
)
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
        return message


class StreamOptions(OpenAIBase):
    """stream_options."""

    include_usage: bool = False


class ResponseFormat(OpenAIBase):
    """response_format; only {"type": "text"} is supported."""

    type: str


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
    logit_bias: LogitBias | Annotated[list[float], Field(max_length=bounds.MAX_LOGIT_BIAS)] | None = None
    user: Name | None = None

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: Any) -> Any:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @property
    def choices(self) -> int:
        """How many completions to generate."""
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_new_tokens: int | None, logprobs: int | None, index: int) -> SamplingParams:
        """SamplingParams for choice `index` (seeds differ per choice so n>1 gives n samples)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        temperature = 1.0 if self.temperature is None else self.temperature
        seed = None if self.seed is None else bounds.wrap_seed(self.seed + index)
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            greedy=temperature == 0.0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=seed,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos),
            min_new_tokens=self.min_tokens or 0,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens is not False,
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
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        if value is not None and value.type != "text":
            raise ValueError(f"response_format type '{value.type}' is not supported (only 'text')")
        return value

    def thinking(self) -> bool | None:
        """enable_thinking from the top level or from xinference-client's chat_template_kwargs."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        kwargs = self.chat_template_kwargs or {}
        for key in ("enable_thinking", "thinking"):
            if isinstance(kwargs.get(key), bool):
                return kwargs[key]
        return None

    def to_generate_requests(self, uid: str, request_id: str, adapter: str | None = None) -> list[GenerateRequest]:
        """One canonical request per choice (n), ids `<request_id>-<index>`."""
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        max_new = self.max_completion_tokens or self.max_tokens
        messages = [message.to_template() for message in self.messages]
        return [
            GenerateRequest(
                request_id=f"{request_id}-{index}",
                model=uid,
                sampling=self.sampling(max_new, logprobs, index),
                messages=messages,
                chat_template_kwargs=dict(self.chat_template_kwargs or {}),
                enable_thinking=self.thinking(),
                add_generation_prompt=self.add_generation_prompt,
                continue_final_message=self.continue_final_message,
                tools=self.tools if self.tool_choice != "none" else None,
                token_details=logprobs is not None,
                split_reasoning=True,
                adapter=adapter,
            )
            for index in range(self.choices)
        ]


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | PromptTokenIds | list[PromptTokenIds]
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    best_of: ChoiceCount | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], (str, list)):
                if len(value) != 1:
                    raise ValueError("only one prompt per request is supported")
                return value[0]
        return value

    def to_generate_requests(self, uid: str, request_id: str, adapter: str | None = None) -> list[GenerateRequest]:
        """One canonical request per choice (n)."""
        text = self.prompt if isinstance(self.prompt, str) else None
        ids = None if isinstance(self.prompt, str) else [int(i) for i in self.prompt]  # type: ignore[arg-type]
        return [
            GenerateRequest(
                request_id=f"{request_id}-{index}",
                model=uid,
                sampling=self.sampling(self.max_tokens or 16, self.logprobs, index),
                prompt=text,
                prompt_token_ids=ids,
                token_details=self.logprobs is not None,
                adapter=adapter,
            )
            for index in range(self.choices)
        ]
