"""Ollama wire schemas (pydantic, no I/O): /api/chat, /api/generate, /api/embed, /api/embeddings, /api/show.

Each generate-kind request converts itself to the one canonical GenerateRequest: `options` become
SamplingParams, `format` a constraint, `think` the template's thinking switch. Options Berth cannot
honour are refused naming the option (never ignored); options that only say how Ollama would load
a model (num_gpu, num_thread, use_mmap, ...) change no output and are accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from berth_server.canonical import GenerateRequest, SamplingParams, temperature_fields
from berth_server.protocols import bounds, constraints
from berth_server.protocols.bounds import Name, Seed, StopList, TextBatch, Tools, TopK
from berth_server.protocols.tool_syntax import function_of
from berth_server.protocols.wire import parse  # noqa: F401 - re-exported for the blueprint

# Options that change the output in ways Berth's samplers cannot, with the values that ask for nothing.
_REFUSED_OPTIONS: dict[str, tuple[Any, ...]] = {"mirostat": (0,), "tfs_z": (1, 1.0)}
_THINK_LEVELS = ("high", "medium", "low")


class OllamaBase(BaseModel):
    """Every Ollama schema: unknown keys are ignored (clients send more than they need)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False, protected_namespaces=())


class Options(OllamaBase):
    """`options`: the sampling knobs Berth honours, num_ctx checked against the model's context."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: TopK | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    typical_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: Seed | None = None
    num_predict: int | None = Field(default=None, ge=-2, le=bounds.MAX_TOKEN_COUNT)
    stop: StopList | None = None
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repeat_last_n: int | None = Field(default=None, ge=-1)
    num_ctx: int | None = Field(default=None, ge=1, le=bounds.MAX_TOKEN_COUNT)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, body: Any) -> Any:
        for name, harmless in _REFUSED_OPTIONS.items():
            if isinstance(body, dict) and body.get(name) is not None and body[name] not in harmless:
                raise ValueError(f"{name} is not supported by Berth (it would be ignored); leave it out")
        return body

    @model_validator(mode="after")
    def _checked(self) -> Options:
        if self.num_predict == 0:
            raise ValueError("num_predict must be positive, -1 (no limit) or -2 (fill the context)")
        penalised = any(v not in (None, 0.0) for v in (self.presence_penalty, self.frequency_penalty)) \
            or self.repeat_penalty not in (None, 1.0)
        if penalised and self.repeat_last_n not in (None, -1):
            raise ValueError("repeat_last_n: Berth's penalties look at the whole context; use -1 or leave it out")
        return self

    def sampling(self, constraint: Any = None, logprobs: int | None = None) -> SamplingParams:
        """SamplingParams; an option left out means off (temperature 1, no top-k/top-p), as on Berth's other routes."""
        limit = self.num_predict if self.num_predict is not None and self.num_predict > 0 else None
        return SamplingParams(
            max_new_tokens=limit,
            **temperature_fields(self.temperature),
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
            typical_p=1.0 if self.typical_p is None else self.typical_p,
            repetition_penalty=self.repeat_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            seed=self.seed,
            stop=tuple(self.stop or ()),
            logprobs=logprobs,
            constraint=constraint,
        )


class ToolCallFunction(OllamaBase):
    """A call's function: its name and its arguments as an object."""

    name: Name
    arguments: dict[str, Any] = {}


class ToolCall(OllamaBase):
    """One call in an assistant message."""

    function: ToolCallFunction


class Message(OllamaBase):
    """One chat message (Ollama's: tool_calls carry argument objects, tool results name their tool)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=bounds.MAX_TOOLS)] | None = None
    tool_name: Name | None = None

    def to_template(self) -> dict[str, Any]:
        """The dict the chat template sees (the same keys Berth's OpenAI messages become)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            message["tool_calls"] = [{"type": "function", "function": call.function.model_dump()}
                                     for call in self.tool_calls]
        if self.tool_name is not None:
            message["name"] = self.tool_name
        if self.thinking:
            message["reasoning_content"] = self.thinking
        return message


Format = Literal["", "json"] | dict[str, Any]
Think = bool | Literal["high", "medium", "low"]


class GenerateFields(OllamaBase):
    """What /api/chat and /api/generate share."""

    model: Name = Field(min_length=1)
    format: Format | None = None
    options: Options | None = None
    think: Think | None = None
    keep_alive: float | str | None = None  # accepted: Berth's models stay loaded until terminated
    stream: bool = True
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _think_is_a_switch(self) -> GenerateFields:
        if self.think in _THINK_LEVELS:
            raise ValueError("think: Berth switches thinking on or off (true or false); levels are not supported")
        return self

    @property
    def opts(self) -> Options:
        """The options, empty when none were sent."""
        return self.options or Options()

    def base_request(self, uid: str, request_id: str, split_reasoning: bool,
                     adapter: str | None = None) -> GenerateRequest:
        """The canonical request without its messages or prompt (the caller adds them)."""
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return GenerateRequest(request_id=request_id, model=uid, adapter=adapter,
                               sampling=self.opts.sampling(constraints.json_format(self.format), logprobs),
                               enable_thinking=self.think if isinstance(self.think, bool) else None,
                               token_details=logprobs is not None, split_reasoning=split_reasoning)


class ChatRequest(GenerateFields):
    """POST /api/chat."""

    messages: Annotated[list[Message], Field(max_length=bounds.MAX_MESSAGES)] = []
    tools: Tools | None = None

    @model_validator(mode="after")
    def _tools_named(self) -> ChatRequest:
        for tool in self.tools or []:
            function_of(tool)  # InvalidRequest naming tools when one has no function name
        return self

    def images(self) -> bool:
        """Whether any message carries images."""
        return any(message.images for message in self.messages)

    def to_generate_request(self, uid: str, request_id: str, adapter: str | None = None) -> GenerateRequest:
        """One canonical chat request: the messages through the model's template, reasoning split off."""
        request = self.base_request(uid, request_id, split_reasoning=True, adapter=adapter)
        request.messages = [message.to_template() for message in self.messages]
        request.tools = self.tools or None
        return request


class GenerateRequestBody(OllamaBase):
    """POST /api/generate's own fields (besides the shared ones)."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class GenerateRequestWire(GenerateFields, GenerateRequestBody):
    """POST /api/generate: a prompt through the model's template (with `system`), or as is when raw."""

    @model_validator(mode="after")
    def _refused(self) -> GenerateRequestWire:
        if self.template and not self.raw:
            raise ValueError("template: Berth renders prompts with the model's own chat template; send raw: true "
                             "with a prompt you templated yourself instead")
        if self.context:
            raise ValueError("context is not supported (Berth returns none); send the conversation to /api/chat")
        return self

    def to_generate_request(self, uid: str, request_id: str, adapter: str | None = None) -> GenerateRequest:
        """One canonical request: raw prompts as they are, others as a user turn after the system prompt."""
        request = self.base_request(uid, request_id, split_reasoning=not self.raw, adapter=adapter)
        if self.raw:
            request.prompt = self.prompt or ""
        else:
            system = [{"role": "system", "content": self.system}] if self.system else []
            request.messages = [*system, {"role": "user", "content": self.prompt or ""}]
        return request


class EmbedRequest(OllamaBase):
    """POST /api/embed: one text or many."""

    model: Name = Field(min_length=1)
    input: str | TextBatch = ""
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1, le=1_000_000)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None

    @model_validator(mode="after")
    def _truncates(self) -> EmbedRequest:
        if not self.truncate:
            raise ValueError("truncate: Berth's embedding models truncate long inputs to their length; "
                             "truncate false is not supported")
        return self

    def texts(self) -> list[str]:
        """The inputs as a list (an empty string input embeds nothing)."""
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return list(self.input)


class EmbeddingsRequest(OllamaBase):
    """POST /api/embeddings (the older route): one prompt, one vector."""

    model: Name = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class ShowRequest(OllamaBase):
    """POST /api/show: `model` (older clients send `name`)."""

    model: Name | None = None
    name: Name | None = None
    verbose: bool = False

    @model_validator(mode="after")
    def _named(self) -> ShowRequest:
        if not (self.model or self.name):
            raise ValueError("model: a model name is required")
        return self

    @property
    def target(self) -> str:
        """The model asked about."""
        return str(self.model or self.name)
