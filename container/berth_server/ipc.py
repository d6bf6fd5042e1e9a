"""Messages between the frontend and a model process, and their msgpack codec.

Transport is pyzmq: each gunicorn worker owns one DEALER (zmq.green) per model process; the model
process owns a ROUTER (ROUTER_MANDATORY, non-blocking sends). A frame is one encoded message; the
model process batches every pending event for one worker into a single EventBatch frame.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import msgspec

from berth_server.adapter_specs import AdapterSource
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest


class Generate(msgspec.Struct, tag="generate"):
    """Start a generation."""

    request: GenerateRequest


class Abort(msgspec.Struct, tag="abort"):
    """The client went away or the frontend gave up: stop and free the batch slot."""

    request_id: str


class Tokenize(msgspec.Struct, tag="tokenize", kw_only=True):
    """Tokenize text (TGI /tokenize), render+tokenize messages (chat), or count a chat request's prompt.

    `chat` is a whole canonical chat request, rendered exactly as its generation would render it (its
    tools and thinking switch included): what the agent APIs' token-count routes answer with.
    """

    request_id: str
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    chat: GenerateRequest | None = None


class TokenSpan(msgspec.Struct, array_like=True):
    """TGI's /tokenize entry: id, text, and character offsets into the input."""

    id: int
    text: str
    start: int
    stop: int


class Tokenized(msgspec.Struct, tag="tokenized"):
    """Reply to Tokenize."""

    request_id: str
    tokens: list[TokenSpan]


class StatsQuery(msgspec.Struct, tag="stats"):
    """Ask a model process for its counters (for /metrics and tests)."""

    request_id: str


class ModelStats(msgspec.Struct, tag="model_stats", kw_only=True):
    """Counters a model process keeps; cumulative unless named otherwise."""

    request_id: str
    running: int = 0  # current batch size
    waiting: int = 0  # queue depth
    requests_total: int = 0
    generated_tokens_total: int = 0
    prompt_tokens_total: int = 0
    aborted_total: int = 0
    finished_total: int = 0
    open_sessions: int = 0  # stateful sessions open on this model
    pinned_sessions: int = 0  # of them, those the engine keeps state for (llama.cpp: a slot pinned to each)
    prefix_cache_queries_total: int | None = None  # prompt tokens looked up; None: the engine does not count
    prefix_cache_hits_total: int | None = None  # of those, tokens found in the prefix cache


class Embed(msgspec.Struct, tag="embed", kw_only=True):
    """Embed texts (embedding model processes)."""

    request_id: str
    texts: list[str]
    normalize: bool | None = None  # None: as the model's sentence-transformers modules say
    dimensions: int | None = None  # Matryoshka: keep the first N, then re-normalise


class Embedded(msgspec.Struct, tag="embedded"):
    """Reply to Embed: one vector per text, and the tokens counted."""

    request_id: str
    vectors: list[list[float]]
    prompt_tokens: int


class Rerank(msgspec.Struct, tag="rerank", kw_only=True):
    """Score documents against a query (rerank model processes)."""

    request_id: str
    query: str
    documents: list[str]


class Reranked(msgspec.Struct, tag="reranked"):
    """Reply to Rerank: one relevance score per document, in input order."""

    request_id: str
    scores: list[float]
    prompt_tokens: int


class AdapterAdd(msgspec.Struct, tag="adapter_add", kw_only=True):
    """Register a LoRA adapter on a model (SageMaker POST /adapters)."""

    request_id: str
    adapter: AdapterSource


class AdapterRemove(msgspec.Struct, tag="adapter_remove", kw_only=True):
    """Forget a LoRA adapter (SageMaker DELETE /adapters/{name})."""

    request_id: str
    name: str


class AdapterQuery(msgspec.Struct, tag="adapter_query", kw_only=True):
    """List a model's LoRA adapters."""

    request_id: str


class AdapterInfo(msgspec.Struct, kw_only=True):
    """One registered adapter as GET /adapters shows it."""

    name: str
    src: str
    rank: int
    pinned: bool = False
    loaded: bool = False  # resident on the device now


class Adapters(msgspec.Struct, tag="adapters", kw_only=True):
    """Reply to the adapter messages: the adapters registered after the change."""

    request_id: str
    adapters: list[AdapterInfo]


SessionAction = Literal["open", "check", "close"]
SessionStateName = Literal["open", "closed", "expired", "unknown", "disabled"]


class SessionRequest(msgspec.Struct, tag="session", kw_only=True):
    """SageMaker's stateful sessions: open one, check one is open, or close one (its engine state is freed)."""

    request_id: str
    action: SessionAction
    session_id: str | None = None  # None to open


class SessionState(msgspec.Struct, tag="session_state", kw_only=True):
    """Reply to SessionRequest: the session's state after the action, and when it expires (Unix seconds)."""

    request_id: str
    session_id: str | None
    state: SessionStateName
    expires_at: float = 0.0


class Transcribe(msgspec.Struct, tag="transcribe", kw_only=True):
    """Recognise speech in an uploaded file (audio models with audio2text); task "translate" into English."""

    request_id: str
    audio: bytes  # the file as uploaded; the model process decodes it
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False


class TranscriptSegment(msgspec.Struct, tag="transcript_segment", kw_only=True):
    """One recognised segment, sent as soon as it is decoded (times in seconds).

    Speech engines yield these without request_id and id; the model process numbers them and sends them on."""

    request_id: str = ""
    id: int = 0
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    tokens: list[int] = []
    words: list[dict[str, Any]] = []


class Transcribed(msgspec.Struct, tag="transcribed", kw_only=True):
    """The end of a transcription: the language heard and the audio's length."""

    request_id: str
    language: str
    duration: float


class Speak(msgspec.Struct, tag="speak", kw_only=True):
    """Synthesize speech (audio models with text2audio); chunks stream when `stream` is set."""

    request_id: str
    text: str
    voice: str
    speed: float = 1.0
    response_format: str = "wav"
    stream: bool = False


class SpeechChunk(msgspec.Struct, tag="speech_chunk", kw_only=True):
    """Encoded audio: the whole file, or the next piece of a streamed one."""

    request_id: str
    data: bytes


class SpeechDone(msgspec.Struct, tag="speech_done", kw_only=True):
    """The end of a speech reply."""

    request_id: str
    sample_rate: int
    samples: int


class MakeImages(msgspec.Struct, tag="make_images", kw_only=True):
    """Generate images from a prompt (image models with text2image)."""

    request_id: str
    prompt: str
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None


class Images(msgspec.Struct, tag="images", kw_only=True):
    """Reply to MakeImages: PNG files."""

    request_id: str
    images: list[bytes]


MediaMessage = Transcribe | Speak | MakeImages
FrontendMessage = (Generate | Abort | Tokenize | StatsQuery | Embed | Rerank | AdapterAdd | AdapterRemove | AdapterQuery
                   | SessionRequest | Transcribe | Speak | MakeImages)
ModelMessage = (Accepted | Delta | Failure | Tokenized | ModelStats | Embedded | Reranked | Adapters
                | SessionState | TranscriptSegment | Transcribed | SpeechChunk | SpeechDone | Images)


class EventBatch(msgspec.Struct, tag="batch"):
    """Everything pending for one frontend worker, sent as one frame."""

    events: list[ModelMessage]


_frontend_encoder = msgspec.msgpack.Encoder()
_frontend_decoder = msgspec.msgpack.Decoder(FrontendMessage)
_model_decoder = msgspec.msgpack.Decoder(EventBatch)


def encode(message: msgspec.Struct) -> bytes:
    """Serialize any IPC struct to msgpack."""
    return _frontend_encoder.encode(message)


def decode_frontend_message(frame: bytes) -> FrontendMessage:
    """Model side: parse what a frontend sent."""
    return _frontend_decoder.decode(frame)


def decode_event_batch(frame: bytes) -> EventBatch:
    """Frontend side: parse a batch of model events."""
    return _model_decoder.decode(frame)


def model_socket_address(runtime_dir: Path, uid: str, replica: int = 0) -> str:
    """The ROUTER address of replica `replica` of the model serving `uid` (deterministic, so no lookup is needed).

    Named by a hash of the uid: a unix socket path must stay under ~100 bytes whatever the uid's
    length, and uids that differ only in characters a file name cannot hold must not collide.
    """
    digest = hashlib.sha256(uid.encode()).hexdigest()[:20]
    return f"ipc://{runtime_dir}/m-{digest}.sock" if replica == 0 else f"ipc://{runtime_dir}/m-{digest}-{replica}.sock"


def control_socket_address(runtime_dir: Path) -> str:
    """The launcher's control ROUTER (list, launch, terminate, registrations, status)."""
    return f"ipc://{runtime_dir}/control.sock"
