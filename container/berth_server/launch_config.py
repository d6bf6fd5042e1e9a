"""The launch config handed from the launcher to a model process, and the status it reports back."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from berth_server.adapter_specs import AdapterSource

ModelType = Literal["LLM", "embedding", "rerank", "audio", "image"]
# Model types a media engine serves (engines/media.py), each in its own model process.
MEDIA_TYPES = ("audio", "image")
ModelState = Literal["starting", "downloading", "loading", "ready", "failed", "stopping", "stopped"]


class ModelLaunchConfig(msgspec.Struct, kw_only=True):
    """Everything a model process needs to load and serve one model. JSON-serializable."""

    uid: str
    source: str  # local dir, file://, s3://, hub id, or a model.tar.gz
    model_name: str  # family/registration name, or the source for ad-hoc models
    model_type: ModelType = "LLM"
    revision: str | None = None
    # The GGUF file inside `source` (a folder, an s3:// prefix or a hub repo); may hold * wildcards.
    gguf_file: str | None = None
    engine: str = "auto"  # a canonical engine name (engines/facts.py) or "auto"
    engine_args: dict[str, Any] = {}
    abilities: list[str] = msgspec.field(default_factory=lambda: ["chat", "generate"])
    chat_template: str | None = None  # overrides the tokenizer's
    stop: list[str] = []
    stop_token_ids: list[int] = []
    reasoning_start_tag: str | None = None
    reasoning_end_tag: str | None = None
    # The chat-template variable that switches thinking (Qwen: enable_thinking, DeepSeek: thinking).
    thinking_variable: str | None = None
    default_enable_thinking: bool | None = None
    context_length: int | None = None
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    is_default: bool = False
    dimensions: int | None = None  # embedding models
    # How the frontend reads tool calls out of the output (protocols/tool_calls.py).
    tool_call_parser: str | None = None
    # LoRA adapters registered at start (Xinference peft_model_config; TGI's LORA_ADAPTERS for the default).
    adapters: list[AdapterSource] = []
    # Audio and image models: Xinference's family ("whisper", "piper", "stable_diffusion") and its default config.
    model_family: str | None = None
    default_model_config: dict[str, Any] = {}
    # Replicas (issue 22): `replica` copies of this model, each its own process and engine; this config is the
    # one of replica `replica_index`. gpu_ids: the GPUs this replica owns (CUDA_VISIBLE_DEVICES), [] on CPU.
    replica: int = 1
    replica_index: int = 0
    gpu_ids: list[str] = []
    n_gpu: int | None = None  # the launch's n_gpu per replica (None: SM_NUM_GPUS / replicas)
    n_cpu: float | None = None  # Ray placement: CPUs a replica reserves (None: 1)
    ray_resources: dict[str, float] = {}  # Ray placement: custom resources a replica needs
    n_worker: int = 1  # vLLM on Ray: pipeline-parallel stages over nodes (Xinference's n_worker)


class ModelDescription(msgspec.Struct, kw_only=True):
    """What a ready model reports: the facts /info, /v1/models and Xinference's describe need."""

    uid: str
    model_name: str
    model_type: ModelType
    source: str
    engine: str
    device: str
    dtype: str
    abilities: list[str]
    max_input_tokens: int
    max_total_tokens: int
    context_length: int
    max_batch_size: int
    pid: int
    reasoning: bool = False
    dimensions: int | None = None
    tool_call_parser: str | None = None
    # Facts about the weights (Ollama's /api/show and /api/tags); None where the weights do not say.
    architecture: str | None = None  # config.json's model_type ("llama")
    parameter_count: int | None = None  # from the safetensors headers
    size_bytes: int | None = None  # the weight files on disk
    weights_format: str | None = None  # "safetensors", "gguf", ...
    quantization: str | None = None  # the launch's quantization, when one was asked
    chat_template: str | None = None  # the template the model process renders chats with
    # Fill-in-the-middle (prefix, suffix, middle) markers when the vocabulary has them (model_process/fill_in_middle.py).
    fill_in_middle: list[str] | None = None
    # Audio and image models: what their engine reports (voices, sample rate, languages, limits).
    media: dict[str, Any] = {}


class ReplicaInfo(msgspec.Struct, kw_only=True):
    """One replica of a model as the launcher sees it (GET /v1/models/{uid}'s "replicas", the frontend's routing)."""

    index: int
    state: ModelState
    node: str = "local"  # the Ray node id, or "local"
    pid: int | None = None
    address: str | None = None  # where its ROUTER listens (None: the ipc path ipc.model_socket_address names)
    server_key: str | None = None  # CURVE public key of a remote (tcp://) replica, z85
    reason: str | None = None


class ModelStatus(msgspec.Struct, tag="model_status", kw_only=True):
    """Pushed by a model process to the launcher as it moves through its states."""

    uid: str
    state: ModelState
    reason: str | None = None
    # TGI-style type of a failure ("validation" for bad weights/specs), so a launch maps to the right 4xx.
    error_type: str | None = None
    progress: float = 0.0  # 0..1 while downloading/loading
    description: ModelDescription | None = None
    replica: int = 0  # from a model process: which replica reports
    replicas: list[ReplicaInfo] = []  # from the launcher: every replica of the model
    address: str | None = None  # from a model process: where it listens when not on the default ipc path
