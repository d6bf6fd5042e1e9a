"""TGI wire schemas (text-generation-inference's OpenAPI): requests, validation and the canonical request."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from berth_server.canonical import GenerateRequest, SamplingParams
from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds, constraints
from berth_server.protocols.bounds import Name, StopString
from berth_server.protocols.wire import parse  # noqa: F401 - re-exported for the blueprints

# TGI's router default when a body leaves max_new_tokens out.
DEFAULT_MAX_NEW_TOKENS = 100
# What /info advertises and validation enforces (TGI's --max-stop-sequences default).
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
# Upper walls only: the lower bounds are TGI's own rules in Parameters.check(), with TGI's messages.
_Count = Annotated[int, Field(le=bounds.MAX_TOKEN_COUNT)]
_Seed = Annotated[int, Field(le=bounds.MAX_SEED)]
_TopK = Annotated[int, Field(le=bounds.MAX_TOP_K)]


class TgiModel(BaseModel):
    """Base of every TGI wire model: unknown keys are ignored, as TGI's serde structs do."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Parameters(TgiModel):
    """TGI GenerateParameters: every key is accepted, null meaning unset (the TGI client sends them all)."""

    do_sample: bool | None = None
    max_new_tokens: _Count | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    return_full_text: bool | None = None
    stop: Annotated[list[StopString], Field(max_length=bounds.MAX_STOP_STRINGS)] | None = None
    seed: _Seed | None = None
    temperature: float | None = None
    top_k: _TopK | None = None
    top_p: float | None = None
    truncate: _Count | None = None
    typical_p: float | None = None
    best_of: Annotated[int, Field(le=bounds.MAX_N)] | None = None
    watermark: bool | None = None
    details: bool | None = None
    decoder_input_details: bool | None = None
    top_n_tokens: Annotated[int, Field(le=bounds.MAX_TOP_K)] | None = None
    grammar: Any = None
    adapter_id: Name | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        # SageMaker-era clients often send one stop string; TGI itself wants a list.
        return [value] if isinstance(value, str) else value

    def check(self) -> None:
        """Apply TGI's validation rules; raise InvalidRequest naming the parameter."""
        _positive(self.repetition_penalty, "repetition_penalty")
        _positive(self.temperature, "temperature")
        _positive(self.top_k, "top_k")
        _positive(self.truncate, "truncate")
        _positive(self.max_new_tokens, "max_new_tokens")
        _positive(self.top_n_tokens, "top_n_tokens")
        _open_unit(self.top_p, "top_p")
        _open_unit(self.typical_p, "typical_p")
        if self.frequency_penalty is not None and not -2.0 <= self.frequency_penalty <= 2.0:
            raise InvalidRequest("`frequency_penalty` must be >= -2.0 and <= 2.0", param="frequency_penalty")
        if self.seed is not None and self.seed < 0:
            raise InvalidRequest("`seed` must be positive", param="seed")
        if self.best_of is not None and self.best_of > 1:
            raise InvalidRequest("`best_of` > 1 is not supported (max_best_of is 1)", param="best_of")
        if self.best_of is not None and self.best_of < 1:
            raise InvalidRequest("`best_of` must be strictly positive", param="best_of")
        if self.watermark:
            raise InvalidRequest("`watermark` is not supported", param="watermark")
        constraints.tgi_grammar(self.grammar)
        if self.stop is not None and len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(
                f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(self.stop)}",
                param="stop",
            )
        if self.top_n_tokens is not None and self.top_n_tokens > MAX_TOP_N_TOKENS:
            raise InvalidRequest(f"`top_n_tokens` must be <= {MAX_TOP_N_TOKENS}", param="top_n_tokens")

    @property
    def sampling(self) -> bool:
        """TGI samples when do_sample is set or any warper is (temperature, top_k, top_p, typical_p)."""
        return bool(
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or self.top_k is not None
            or self.top_p is not None
            or self.typical_p is not None
        )


def _positive(value: float | None, name: str) -> None:
    if value is not None and value <= 0:
        raise InvalidRequest(f"`{name}` must be strictly positive", param=name)


def _open_unit(value: float | None, name: str) -> None:
    if value is not None and not 0.0 < value < 1.0:
        raise InvalidRequest(f"`{name}` must be > 0.0 and < 1.0", param=name)


class ParametersBody(TgiModel):
    """A TGI body's parameters (null means none, as TGI's client sends) and stream flag."""

    parameters: Parameters = Parameters()
    stream: bool = False

    @field_validator("parameters", mode="before")
    @classmethod
    def _null_parameters(cls, value: Any) -> Any:
        return {} if value is None else value


class GenerateBody(ParametersBody):
    """TGI GenerateRequest / CompatGenerateRequest: inputs, parameters and (on POST /) stream."""

    inputs: str

    def check(self) -> None:
        """Validate inputs and parameters."""
        if not self.inputs:
            raise InvalidRequest("`inputs` cannot be empty", param="inputs")
        self.parameters.check()

    def to_canonical(self, request_id: str, uid: str) -> GenerateRequest:
        """The canonical request: token details on (TGI tokens/streams need them), a seed when sampling."""
        params = self.parameters
        sampling = params.sampling
        seed = params.seed
        if sampling and seed is None:
            # TGI reports the seed it sampled with, so pick one here to be able to echo it.
            seed = secrets.randbelow(2**63)
        knobs = SamplingParams(
            max_new_tokens=params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            greedy=not sampling,
            temperature=params.temperature if params.temperature is not None else 1.0,
            top_p=params.top_p if params.top_p is not None else 1.0,
            top_k=params.top_k or 0,
            typical_p=params.typical_p if params.typical_p is not None else 1.0,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty is not None else 1.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            seed=seed if sampling else params.seed,
            stop=tuple(params.stop or ()),
            logprobs=params.top_n_tokens or 0,
            prompt_logprobs=bool(params.decoder_input_details),
            constraint=constraints.tgi_grammar(params.grammar),
        )
        return GenerateRequest(
            request_id=request_id,
            model=uid,
            sampling=knobs,
            prompt=self.inputs,
            truncate=params.truncate,
            token_details=True,
            adapter=params.adapter_id,  # unknown ids are a 404 from the model process
        )


class TokenizeBody(TgiModel):
    """TGI POST /tokenize body (parameters are accepted and ignored, as TGI does)."""

    inputs: str
    parameters: Parameters | None = None
    add_special_tokens: bool = True


FinishReasonTgi = Literal["length", "eos_token", "stop_sequence"]
