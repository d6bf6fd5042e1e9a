"""Xinference wire schemas: registration bodies, embeddings (OpenAI shape) and rerank (Xinference/Cohere shape)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from berth_server.errors import InvalidRequest
from berth_server.protocols import bounds
from berth_server.protocols.bounds import Name, TextBatch
from berth_server.protocols.wire import parse  # noqa: F401 - re-exported for the blueprints


class XinferenceModel(BaseModel):
    """Base of every wire model here: unknown keys are ignored (clients send extras)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)


class RegisterBody(XinferenceModel):
    """POST /v1/model_registrations/{type}: the registration JSON as a string."""

    model: str
    persist: bool = False
    worker_ip: str | None = None


class LaunchBody(BaseModel):
    """POST /v1/models, as documented: Xinference's launch keys; others are engine arguments on an allowlist.

    models/launch_resolver.py parses the body (it must see every key to refuse the unknown ones);
    this model describes it for /openapi.json.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: bounds.Name
    model_uid: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    model_type: Literal["LLM", "embedding", "rerank"] | None = None
    model_engine: str | None = None
    model_format: str | None = None
    model_size_in_billions: int | str | None = None
    quantization: str | None = None
    model_path: str | None = None
    enable_thinking: bool | None = None
    n_gpu: int | Literal["auto"] | None = None
    replica: int | None = Field(default=None, ge=1, le=64)
    n_cpu: float | None = Field(default=None, gt=0)
    ray_resources: dict[str, float] | None = None
    tool_call_parser: str | None = None
    wait_ready: bool | None = None


class EmbeddingRequest(XinferenceModel):
    """POST /v1/embeddings (OpenAI shape)."""

    model: Name
    input: str | TextBatch
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1_000_000)
    user: Name | None = None

    def texts(self) -> list[str]:
        """The inputs as a list; empty strings are refused as OpenAI does."""
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if any(not text for text in texts):
            raise InvalidRequest("input must not contain empty strings", param="input")
        return texts


class RerankRequest(XinferenceModel):
    """POST /v1/rerank (Xinference/Cohere shape)."""

    model: Name
    query: str = Field(min_length=1)
    documents: TextBatch
    top_n: int | None = Field(None, ge=1, le=bounds.MAX_BATCH_TEXTS)
    return_documents: bool | None = False
    return_len: bool | None = False


class RerankResult(XinferenceModel):
    """One scored document."""

    index: int
    relevance_score: float
    document: dict[str, str] | None = None
