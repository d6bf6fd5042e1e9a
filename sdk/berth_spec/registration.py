"""Xinference's version-2 model registration JSON (LLM, embedding, rerank, audio, image) as pure pydantic models."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ModelType = Literal["LLM", "embedding", "rerank", "audio", "image"]
MODEL_TYPES: tuple[str, ...] = ("LLM", "embedding", "rerank", "audio", "image")
Ability = Literal["generate", "chat", "embed", "tools", "vision", "reasoning", "hybrid", "audio"]
# Xinference's abilities of audio and image models.
AudioAbility = Literal["audio2text", "text2audio"]
ImageAbility = Literal["text2image", "image2image", "inpainting"]
# Custom names: a letter or digit first, then letters, digits, "_" and "-"; 100 characters at most.
NAME_MAX_LENGTH = 100
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_name(name: str, what: str = "model_name") -> str:
    """Raise ValueError unless `name` follows Xinference's custom-name rules (with a length cap)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} is required")
    if len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"{what} {name[:20]!r}... is longer than {NAME_MAX_LENGTH} characters")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"{what} {name!r} is invalid: start with a letter or digit; use only letters, digits, '_' and '-'"
        )
    return name


class _Base(BaseModel):
    # Xinference's JSON carries fields Berth does not use (model_file_name_template, ...): keep them.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class _SpecBase(_Base):
    model_format: str = "pytorch"
    model_hub: str = "huggingface"
    model_id: str | None = None
    model_uri: str | None = None
    model_revision: str | None = None
    quantization: str = "none"

    @model_validator(mode="after")
    def _has_location(self) -> _SpecBase:
        if not self.model_id and not self.model_uri:
            raise ValueError("each model spec needs model_id or model_uri")
        return self


class LLMSpec(_SpecBase):
    """One format/size/quantization of an LLM family."""

    model_size_in_billions: int | str | float = 0
    activated_size_in_billions: int | str | float | None = None
    # ggufv2: the file name, with {quantization}; the quantizations the folder or hub repo holds.
    model_file_name_template: str | None = None
    quantizations: list[str] | None = None

    @model_validator(mode="after")
    def _gguf(self) -> LLMSpec:
        if self.model_format != "ggufv2":
            return self
        if not self.model_file_name_template and not (self.model_uri or "").lower().endswith(".gguf"):
            raise ValueError("a ggufv2 spec needs model_file_name_template (with {quantization}) "
                             "unless model_uri names the .gguf file")
        if self.model_file_name_template and "{" in self.model_file_name_template:
            try:
                self.model_file_name_template.format(quantization="Q4_K_M")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"model_file_name_template {self.model_file_name_template!r}: only "
                                 f"{{quantization}} may be filled in ({exc})") from None
        return self

    def offered_quantizations(self) -> list[str]:
        """The quantizations this spec serves (a ggufv2 spec may list several)."""
        return list(self.quantizations or []) or [self.quantization]

    def gguf_file_name(self, quantization: str) -> str | None:
        """The GGUF file of `quantization` inside the spec's folder or hub repo (None: model_uri is the file)."""
        if not self.model_file_name_template:
            return None
        return self.model_file_name_template.format(quantization=quantization)

    @field_validator("model_size_in_billions", "activated_size_in_billions")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is None or isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value) if value.is_integer() else str(value).replace(".", "_")
        if not re.match(r"^\d+(_\d+)?$", str(value)):
            raise ValueError(f"model_size_in_billions {value!r}: use an int or a string like '0_5'")
        return value

    @property
    def size_key(self) -> str:
        """The size as a comparable string ('0_5', '7')."""
        return size_key(self.model_size_in_billions)


def size_key(size: str | float | None) -> str:
    """Normalise a size (7, '7', 0.5, '0_5', '0.5') to Xinference's string form."""
    if size is None:
        return ""
    if isinstance(size, float):
        size = int(size) if size.is_integer() else str(size)
    return str(size).replace(".", "_")


class EncoderSpec(_SpecBase):
    """One format of an embedding or rerank model."""


class _RegistrationBase(_Base):
    version: Literal[2] = 2
    model_name: str
    virtualenv: dict[str, Any] | None = None
    cache_config: dict[str, Any] | None = None
    is_builtin: bool = False

    @model_validator(mode="after")
    def _rules_hold(self) -> _RegistrationBase:
        problems = self.rule_problems({**self.__dict__, **(self.__pydantic_extra__ or {})})
        if problems:
            raise ValueError("; ".join(f"{where}: {message}" for where, message in problems))
        return self

    @classmethod
    def rule_problems(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, why) for every rule across fields that `values` breaks.

        Works on raw JSON as well as on validated fields, so a registration that also fails field
        validation is told every fault at once (pydantic skips model validators after a field error).
        """
        problems: list[tuple[str, str]] = []
        # Built-in names follow Xinference's own (with dots: "qwen2.5-instruct"); custom names are strict.
        name = values.get("model_name")
        if not values.get("is_builtin") and isinstance(name, str):
            try:
                check_name(name)
            except ValueError as exc:
                problems.append(("model_name", str(exc)))
        return problems

    def warnings(self) -> list[str]:
        """What Berth accepts but does not act on."""
        if self.virtualenv and any(v for v in self.virtualenv.values() if v not in (None, [], True)):
            return ["virtualenv is accepted and ignored: Berth runs every model in the image's environment"]
        return []


class LLMRegistration(_RegistrationBase):
    """An LLM family: Xinference's LLMFamilyV2 plus Berth's thinking_variable."""

    context_length: int = Field(2048, gt=0)
    model_lang: list[str] = []
    model_ability: list[Ability] = ["generate"]
    model_description: str | None = None
    model_family: str | None = None
    model_specs: list[LLMSpec] = Field(min_length=1)
    chat_template: str | None = None
    stop_token_ids: list[int] | None = None
    stop: list[str] | None = None
    reasoning_start_tag: str | None = None
    reasoning_end_tag: str | None = None
    # The chat-template variable that switches thinking (Qwen3: enable_thinking; DeepSeek V3.1: thinking).
    thinking_variable: str | None = None
    # Berth's name of the model's tool-call format ("hermes", "llama3_json"); None: tool calls stay text.
    tool_call_parser: str | None = None

    @classmethod
    def rule_problems(cls, values: dict[str, Any]) -> list[tuple[str, str]]:
        """The base rules plus an LLM's: a family, paired reasoning tags, abilities that fit together."""
        problems = super().rule_problems(values)
        if not values.get("is_builtin") and not values.get("model_family"):
            problems.append(("model_family", "model_family is required for a custom LLM"))
        if bool(values.get("reasoning_start_tag")) != bool(values.get("reasoning_end_tag")):
            problems.append(("reasoning_end_tag", "reasoning_start_tag and reasoning_end_tag go together"))
        abilities = values.get("model_ability", [])
        abilities = abilities if isinstance(abilities, list) else []
        if "hybrid" in abilities and "reasoning" not in abilities:
            problems.append(("model_ability", "the hybrid ability needs the reasoning ability too"))
        if "embed" in abilities:
            problems.append(("model_ability", "register embedding models with model_type 'embedding'"))
        return problems


class EmbeddingRegistration(_RegistrationBase):
    """An embedding model."""

    dimensions: int = Field(gt=0)
    max_tokens: int = Field(512, gt=0)
    language: list[str] = []
    model_specs: list[EncoderSpec] = Field(min_length=1)


class RerankRegistration(_RegistrationBase):
    """A rerank (cross-encoder) model."""

    language: list[str] = []
    type: str = "unknown"
    max_tokens: int = Field(512, gt=0)
    model_specs: list[EncoderSpec] = Field(min_length=1)


class MediaSpec(_SpecBase):
    """Where an audio or image model's weights are: Xinference keeps these fields on the family itself."""


class _MediaRegistration(_RegistrationBase):
    """Xinference's audio and image families are flat: one model_id / model_uri, no model_specs list."""

    model_family: str
    model_id: str | None = None
    model_uri: str | None = None
    model_revision: str | None = None
    model_hub: str = "huggingface"
    model_format: str = "pytorch"
    default_model_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_location(self) -> _MediaRegistration:
        if not self.model_id and not self.model_uri:
            raise ValueError("model_id or model_uri is required")
        return self

    @property
    def model_specs(self) -> list[MediaSpec]:
        """The one spec of a flat family, so launches choose specs the same way for every model type."""
        return [MediaSpec(model_format=self.model_format, model_hub=self.model_hub, model_id=self.model_id,
                          model_uri=self.model_uri, model_revision=self.model_revision)]


class AudioRegistration(_MediaRegistration):
    """A speech model (Xinference's AudioModelFamilyV2): whisper-style speech recognition or a voice."""

    multilingual: bool = False
    language: str | list[str] | None = None
    model_ability: list[AudioAbility] = Field(["audio2text"], min_length=1)
    default_transcription_config: dict[str, Any] | None = None


class ImageRegistration(_MediaRegistration):
    """An image-generation model (Xinference's ImageModelFamilyV2, e.g. the stable_diffusion family)."""

    model_ability: list[ImageAbility] = Field(["text2image"], min_length=1)


Registration = Union[  # noqa: UP007 - a runtime alias on 3.10
    LLMRegistration, EmbeddingRegistration, RerankRegistration, AudioRegistration, ImageRegistration]
REGISTRATION_CLASSES: dict[str, type[_RegistrationBase]] = {
    "LLM": LLMRegistration,
    "embedding": EmbeddingRegistration,
    "rerank": RerankRegistration,
    "audio": AudioRegistration,
    "image": ImageRegistration,
}


class RegistrationError(ValueError):
    """A registration that is not valid JSON or does not follow the schema; the message says why."""


def check_model_type(model_type: str) -> str:
    """Return the canonical model type ('llm' -> 'LLM'); RegistrationError if unsupported."""
    for known in MODEL_TYPES:
        if model_type.lower() == known.lower():
            return known
    raise RegistrationError(f"model_type {model_type!r} is not supported; use one of {', '.join(MODEL_TYPES)}")


def _explain(exc: ValidationError, cls: type[_RegistrationBase], data: dict[str, Any]) -> str:
    """Every fault at once: pydantic's field errors, then the cross-field rules it did not get to run."""
    parts = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        # A model-level error (empty loc) is rule_problems' own text, which names its fields already.
        parts.append(f"{'.'.join(str(p) for p in error['loc'])}: {message}" if error["loc"] else message)
    failed_fields = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    for where, message in cls.rule_problems(data):
        text = f"{where}: {message}"
        if where not in failed_fields and not any(message in part for part in parts):
            parts.append(text)
    return "; ".join(parts)


def parse_registration(model_type: str, model: str | dict[str, Any], *, builtin: bool = False) -> Registration:
    """Validate one registration (a JSON string or a dict) of `model_type`; RegistrationError says why not."""
    cls = REGISTRATION_CLASSES[check_model_type(model_type)]
    if isinstance(model, str):
        try:
            data = json.loads(model)
        except json.JSONDecodeError as exc:
            raise RegistrationError(f"the model registration is not valid JSON: {exc}") from None
        except RecursionError:
            raise RegistrationError("the model registration nests too deeply to be a registration") from None
    else:
        data = model
    if not isinstance(data, dict):
        raise RegistrationError("the model registration must be a JSON object")
    data = {**data, "is_builtin": builtin}
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise RegistrationError(f"invalid {model_type} registration: {_explain(exc, cls, data)}") from None
