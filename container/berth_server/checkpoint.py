"""The one reader of a checkpoint folder's own files: config (with text_config), generation config, chat template.

Everything Berth needs to know about a transformers checkpoint before loading it (context length,
dtype, vocabulary, EOS ids, architecture, chat template) comes from here, read the same way for
every engine; no torch, no vLLM. A missing or unreadable file reads as empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The keys vLLM reads for a model's maximum length (vllm/transformers_utils/model_arch_config_convertor.py);
# the smallest one present wins, as there.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer: a folder's files, or a single-file checkpoint's (GGUF) metadata, which
    also carries its chat template and EOS."""
    from transformers import AutoTokenizer

    if path.is_file():
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def model_config(model_dir: Path) -> dict[str, Any]:
    """config.json as written (a multimodal checkpoint's text model is under text_config)."""
    return _read(Path(model_dir) / "config.json")


def text_config(model_dir: Path) -> dict[str, Any]:
    """The text model's config: config.json's text_config over its top level (which holds what both share)."""
    config = model_config(model_dir)
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def generation_eos_ids(model_dir: Path) -> set[int]:
    """generation_config.json's eos_token_id (one id or a list)."""
    eos = _read(Path(model_dir) / "generation_config.json").get("eos_token_id")
    return {int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else [])}


def chat_template(model_dir: Path) -> str | None:
    """The checkpoint's own chat template: chat_template.jinja, chat_template.json, or tokenizer_config.json's."""
    folder = Path(model_dir)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text()
        except OSError:
            return None
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = _read(folder / name).get("chat_template")
        if isinstance(template, str) and template:
            return template
    return None


def model_context_length(model_dir: Path) -> int | None:
    """The longest sequence (prompt + output) the checkpoint is made for, or None when it does not say.

    Rope scaling factors are not applied: a server-wide limit capped here is at worst a little
    shorter than vLLM would allow, never longer (which vLLM refuses and transformers gets wrong).
    """
    text = text_config(model_dir)
    lengths = [int(v) for key in _LENGTH_KEYS if isinstance(v := text.get(key), int | float) and v > 0]
    tokenizer_limit = _read(Path(model_dir) / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**9:  # huge values mean "unset"
        lengths.append(tokenizer_limit)
    return min(lengths) if lengths else None


def capped_length(requested: int | None, model_dir: Path) -> tuple[int | None, int | None]:
    """(requested capped by the model's own context, that context): a server-wide MAX_TOTAL_TOKENS
    larger than a small model's context must not stop the model from loading."""
    own = model_context_length(model_dir)
    if requested is None or own is None:
        return requested or own, own
    return min(requested, own), own


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype the checkpoint's config.json declares its weights in (`dtype`, or the older `torch_dtype`)."""
    text = text_config(model_dir)
    for key in ("dtype", "torch_dtype"):
        value = text.get(key)
        if isinstance(value, str) and value:
            return value.removeprefix("torch.")
    return None


# Files that hold weights, by suffix (what /api/show and /api/tags report as a model's size).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def weights_size(model_dir: Path) -> int | None:
    """Bytes of weights in a checkpoint folder (or one GGUF file); None when there are none to measure."""
    path = Path(model_dir)
    files = [path] if path.is_file() else [f for f in path.glob("*") if f.suffix in _WEIGHT_SUFFIXES]
    try:
        total = sum(f.stat().st_size for f in files if f.is_file())
    except OSError:
        return None
    return total or None


def _gguf_header(path: Path) -> tuple[str | None, int | None]:
    """A GGUF file's general.architecture and parameter count (the sum of its tensors' elements)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace") if field is not None else None
        return arch or None, sum(int(tensor.n_elements) for tensor in reader.tensors) or None
    except Exception:  # noqa: BLE001 - facts for display: an unreadable header says nothing
        return None, None


def parameter_count(model_dir: Path) -> int | None:
    """Parameters in a checkpoint's safetensors files (or one GGUF file), read from their headers alone;
    None without them."""
    if Path(model_dir).suffix == ".gguf":
        return _gguf_header(Path(model_dir))[1]
    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else ():
        try:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size)) if 0 < size < 100_000_000 else {}
        except (OSError, ValueError):
            return None
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                count = 1
                for dim in tensor.get("shape") or []:
                    count *= int(dim)
                total += count
    return total or None


def architecture(model_dir: Path) -> str | None:
    """The checkpoint's architecture family as its config names it (config.json's model_type: "llama"; a GGUF
    file's general.architecture)."""
    if Path(model_dir).suffix == ".gguf":
        return _gguf_header(Path(model_dir))[0]
    kind = text_config(model_dir).get("model_type") if Path(model_dir).is_dir() else None
    return kind if isinstance(kind, str) and kind else None
