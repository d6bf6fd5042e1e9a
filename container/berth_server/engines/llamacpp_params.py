"""Translate Berth's request and settings into llama.cpp's: one completion body per request, one server config.

Kept apart from the engine so the mapping can be tested without loading a model. xllamacpp is
imported lazily (in `common_params` only); the GGUF metadata comes from the `gguf` package.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.engines.base import EngineRequest
from berth_server.engines.engine_settings import LlamaCppSettings
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

log = logging.getLogger(__name__)

# llama.cpp's seed meaning "pick one at random" (LLAMA_DEFAULT_SEED).
RANDOM_SEED = 0xFFFFFFFF
# Without an explicit MAX_TOTAL_TOKENS, a slot's context is the model's, capped here: every slot
# reserves its KV cache up front, and GGUF models often declare 32k-128k tokens.
DEFAULT_SLOT_CONTEXT = 4096
# On a CPU, with no BERTH_KV_CACHE_GB, the slots share this much KV cache (vLLM's CPU default too).
DEFAULT_CPU_KV_CACHE_GB = 1.0
KV_BYTES_PER_VALUE = 2  # llama.cpp's default f16 KV cache


@dataclass(frozen=True)
class GgufFacts:
    """What Berth needs from a GGUF file's metadata."""

    path: Path
    architecture: str
    context_length: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    file_type: str = "gguf"  # the quantization (general.file_type), e.g. 'q4_1'

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token costs across all layers (K and V, f16)."""
        return max(1, 2 * self.n_layer * self.n_head_kv * self.head_dim * KV_BYTES_PER_VALUE)


def _scalar(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8", errors="replace")
    return value.tolist()[0] if hasattr(value, "tolist") else value


def read_gguf_facts(path: Path) -> GgufFacts:
    """Read a GGUF file's header; InvalidRequest naming the file when it is not a readable GGUF."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
        arch = str(_scalar(reader, "general.architecture") or "")
        if not arch:
            raise ValueError("no general.architecture in its metadata")
        n_head = int(_scalar(reader, f"{arch}.attention.head_count") or 0)
        n_head_kv = int(_scalar(reader, f"{arch}.attention.head_count_kv") or n_head or 1)
        embd = int(_scalar(reader, f"{arch}.embedding_length") or 0)
        head_dim = int(_scalar(reader, f"{arch}.attention.key_length") or (embd // n_head if n_head else 128))
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        return GgufFacts(
            path=path, architecture=arch,
            context_length=int(_scalar(reader, f"{arch}.context_length") or 2048),
            n_layer=int(_scalar(reader, f"{arch}.block_count") or 1), n_head_kv=n_head_kv, head_dim=head_dim,
            n_vocab=len(tokens.data) if tokens is not None else 0, file_type=_file_type(reader),
        )
    except errors.BerthError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt files fail in many ways inside gguf
        raise errors.InvalidRequest(f"cannot read the GGUF file {str(path)!r}: {exc}", param="model") from None


def _file_type(reader: Any) -> str:
    """The file's quantization label (general.file_type as gguf's LlamaFileType name), 'gguf' when unknown."""
    from gguf import LlamaFileType

    code = _scalar(reader, "general.file_type")
    try:
        return LlamaFileType(int(code)).name.removeprefix("MOSTLY_").lower()
    except (TypeError, ValueError):
        return "gguf"


def gguf_path(model_path: Path) -> Path | None:
    """The .gguf file to serve: the path itself, or the only .gguf file in a directory."""
    if model_path.is_file():
        return model_path if model_path.suffix.lower() == ".gguf" else None
    if model_path.is_dir():
        found = sorted(model_path.glob("*.gguf"))
        return found[0] if len(found) == 1 else None
    return None


def gpu_visible() -> bool:
    """Whether llama.cpp sees a GPU device (xllamacpp's device list)."""
    try:
        import xllamacpp

        return any(str(d.get("type", "")).upper().endswith("GPU") for d in xllamacpp.get_device_info())
    except Exception:  # noqa: BLE001 - no GPU info means CPU
        return False


@dataclass(frozen=True)
class ServerOptions:
    """llama.cpp server settings for one model, derived once from settings, launch config and GGUF facts."""

    model_path: Path
    threads: int
    n_parallel: int
    slot_context: int
    n_ctx: int
    n_gpu_layers: int


def server_options(path: Path, facts: GgufFacts, config: ModelLaunchConfig, settings: Settings,
                   cpu_count: int, on_gpu: bool = False, own: LlamaCppSettings | None = None) -> ServerOptions:
    """Threads, slots and context sizes: slots from MAX_CONCURRENT_REQUESTS, a slot's context from MAX_TOTAL_TOKENS."""
    own = own if own is not None else LlamaCppSettings.from_env()
    explicit = config.max_total_tokens or (settings.max_total_tokens if config.is_default else None)
    slot_context = min(explicit or config.context_length or facts.context_length, facts.context_length)
    if not explicit and slot_context > DEFAULT_SLOT_CONTEXT:
        log.info("llama.cpp: %d-token context per slot (the model allows %d; set MAX_TOTAL_TOKENS for more)",
                 DEFAULT_SLOT_CONTEXT, slot_context)
        slot_context = DEFAULT_SLOT_CONTEXT
    args = config.engine_args  # launch-body keys, allowed by models/launch_keys.py
    n_parallel = max(1, int(args.get("n_parallel") or min(settings.max_concurrent_requests, settings.max_batch_size)))
    if args.get("n_ctx"):  # llama.cpp's meaning: the KV cache all slots share
        slot_context = min(max(1, int(args["n_ctx"]) // n_parallel), facts.context_length)
    budget_gb = settings.kv_cache_gb if settings.kv_cache_gb is not None else (
        None if on_gpu else DEFAULT_CPU_KV_CACHE_GB)
    if budget_gb is not None:
        fits = int(budget_gb * (1 << 30)) // (facts.kv_bytes_per_token * slot_context)
        if fits < n_parallel:
            # Fewer slots, each with its own cache, rather than one cache the slots share (kv_unified):
            # llama.cpp's attention over a shared cache depends on where the other requests' tokens
            # sit, so greedy answers change with what else runs (8 SmolLM2 Q4_1 chats sent together:
            # 3-4 of 8 kept their words on llama.cpp's own server with a shared cache, 8 of 8 without).
            log.info("llama.cpp: %d slots of %d tokens fit %.2f GiB of KV cache (not %d; set BERTH_KV_CACHE_GB "
                     "for more)", max(1, fits), slot_context, budget_gb, n_parallel)
            n_parallel = max(1, fits)
    threads = int(args.get("n_threads") or own.threads or max(1, cpu_count))
    gpu_layers = own.n_gpu_layers if own.n_gpu_layers is not None else (-1 if on_gpu else 0)
    if args.get("n_gpu_layers") is not None:
        gpu_layers = int(args["n_gpu_layers"])
    return ServerOptions(model_path=path, threads=threads, n_parallel=n_parallel, slot_context=slot_context,
                         n_ctx=slot_context * n_parallel, n_gpu_layers=gpu_layers)


def common_params(options: ServerOptions, api_key: str) -> Any:
    """xllamacpp.CommonParams for `options` (continuous batching, no prompt-cache RAM, a private HTTP key)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(options.model_path)
    params.n_parallel = options.n_parallel
    params.n_ctx = options.n_ctx
    params.kv_unified = False  # one cache per slot: answers do not depend on the other requests (server_options)
    params.cont_batching = True
    params.n_gpu_layers = options.n_gpu_layers
    params.cpuparams.n_threads = options.threads
    params.cpuparams_batch.n_threads = options.threads
    params.warmup = True
    params.cache_ram_mib = 0  # Berth's requests rarely share long prefixes across slots
    params.ctx_shift = False  # a full slot ends the request (Berth checks limits before) instead of dropping context
    # xllamacpp always starts llama.cpp's HTTP server too (on 127.0.0.1, a free port); Berth calls
    # the routes in-process, so lock that listener with a key nobody knows.
    params.api_keys = [api_key]
    params.port = 0
    return params


def completion_body(request: EngineRequest, n_vocab: int) -> dict[str, Any]:
    """The body of llama.cpp's /v1/completions for one request: prompt ids in, every sampling knob explicit.

    llama.cpp's own defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_last_n 64) differ from
    Berth's "off" defaults, so each knob is always sent. `verbose` makes each streamed chunk name
    the id of its token and the count made so far; probabilities are asked for only with logprobs.
    Raises InvalidRequest for what llama.cpp cannot honour. Constraints and token biases come from
    llamacpp_constraints.
    """
    s = request.sampling
    if s.prompt_logprobs:
        raise errors.InvalidRequest("prompt logprobs (decoder_input_details) are not available on the llama.cpp "
                                    "engine", param="decoder_input_details")
    if s.min_new_tokens:
        raise errors.InvalidRequest("min_new_tokens is not supported by the llama.cpp engine",
                                    param="min_new_tokens")
    _check(s.temperature >= 0.0 and math.isfinite(s.temperature), "temperature", s.temperature, "must be >= 0")
    _check(0.0 < s.top_p <= 1.0, "top_p", s.top_p, "must be in (0, 1]")
    _check(s.top_k >= 0, "top_k", s.top_k, "must be >= 0")
    _check(0.0 <= s.min_p <= 1.0, "min_p", s.min_p, "must be in [0, 1]")
    _check(0.0 < s.typical_p <= 1.0, "typical_p", s.typical_p, "must be in (0, 1]")
    _check(s.repetition_penalty > 0.0 and math.isfinite(s.repetition_penalty), "repetition_penalty",
           s.repetition_penalty, "must be > 0")
    _check(-2.0 <= s.frequency_penalty <= 2.0, "frequency_penalty", s.frequency_penalty, "must be in [-2, 2]")
    _check(-2.0 <= s.presence_penalty <= 2.0, "presence_penalty", s.presence_penalty, "must be in [-2, 2]")
    _check(s.logprobs is None or 0 <= s.logprobs <= 100, "logprobs", s.logprobs, "must be in [0, 100] here")
    bad = [t for t in request.prompt_token_ids if not 0 <= t < n_vocab]
    _check(not bad, "prompt", bad[:3], f"token ids must be in [0, {n_vocab})")
    greedy = s.takes_argmax
    from berth_server.engines.llamacpp_constraints import constraint_fields

    return constraint_fields(request, n_vocab) | {
        "prompt": list(request.prompt_token_ids),
        "stream": True,
        "max_tokens": request.max_new_tokens,
        "temperature": 0.0 if greedy else s.temperature,
        # Greedy keeps the argmax either way; top_k 1 spares sampling a softmax over the whole vocabulary.
        "top_k": 1 if greedy else s.top_k,
        "top_p": 1.0 if greedy else s.top_p,
        "min_p": 0.0 if greedy else s.min_p,
        "typical_p": 1.0 if greedy else s.typical_p,
        "repeat_penalty": s.repetition_penalty,
        "repeat_last_n": len(request.prompt_token_ids) + request.max_new_tokens,  # HF: the whole sequence
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "seed": RANDOM_SEED if s.seed is None else s.seed % (1 << 32),
        "ignore_eos": s.ignore_eos,
        # Each chunk's "__verbose" then names its token ids and tokens_predicted (the slot's count).
        "verbose": True,
        "cache_prompt": True,
    } | _probabilities(s.logprobs, greedy or s.top_k > 0)


def _probabilities(logprobs: int | None, few_candidates: bool) -> dict[str, Any]:
    """n_probs and post_sampling_probs: logprobs as asked, else the cheapest entry that carries the raw bytes.

    A chunk's text holds U+FFFD where the bytes it merged are not UTF-8; its probability entry holds
    the bytes themselves, which recovering merged ids needs. Raw-distribution probabilities (what the
    other engines report as logprobs) cost llama.cpp a sort of the whole vocabulary per token, about
    15% of the tokens/s of 16 SmolLM2 streams; probabilities after sampling are free when top_k
    leaves few candidates (greedy sends top_k 1).
    """
    if logprobs is not None:
        return {"n_probs": max(1, logprobs), "post_sampling_probs": False}  # n_probs 1 serves logprobs=0
    return {"n_probs": 1, "post_sampling_probs": few_candidates}


def _check(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise errors.InvalidRequest(f"{name}={value!r} {why}", param=name)
