"""Read a peft LoRA adapter folder and check it against the running model (shapes, rank, features)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from berth_server.errors import InvalidRequest

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class AdapterConfig:
    """What adapter_config.json says, as far as serving needs it."""

    rank: int
    scaling: float
    base_model: str | None
    targets: tuple[str, ...]


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter's LoRA pairs on the host: module path -> (A [r, in], B [out, r])."""

    name: str
    folder: Path
    config: AdapterConfig
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_config(name: str, folder: Path, max_rank: int) -> AdapterConfig:
    """Parse and check adapter_config.json: plain LoRA, rank within the engine's limit."""
    if not folder.is_dir():
        raise InvalidRequest(f"adapter '{name}': source folder {folder} does not exist", param="src")
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise InvalidRequest(f"adapter '{name}': {folder} has no adapter_config.json", param="src")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"adapter '{name}': adapter_config.json is not readable JSON ({exc})",
                             param="src") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise InvalidRequest(f"adapter '{name}': peft_type {raw.get('peft_type')!r} is not LORA", param="src")
    unsupported = [key for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern",
                                   "layers_to_transform", "trainable_token_indices", "lora_bias")
                   if raw.get(key)]
    if raw.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise InvalidRequest(f"adapter '{name}': {', '.join(unsupported)} is not supported (plain LoRA only)",
                             param="src")
    rank = int(raw.get("r") or 8)
    if rank < 1 or rank > max_rank:
        raise InvalidRequest(f"adapter '{name}': rank {rank} is above this engine's max LoRA rank {max_rank}",
                             param="src")
    alpha = float(raw.get("lora_alpha") or rank)
    scaling = alpha / math.sqrt(rank) if raw.get("use_rslora") else alpha / rank
    targets = raw.get("target_modules") or []
    return AdapterConfig(rank=rank, scaling=scaling, base_model=raw.get("base_model_name_or_path"),
                         targets=tuple([targets] if isinstance(targets, str) else targets))


def read_adapter(name: str, folder: Path, max_rank: int, shapes: dict[str, tuple[int, int]],
                 dtype: torch.dtype) -> AdapterWeights:
    """Load the adapter's tensors and check each pair against the model's Linear (in, out) shapes."""
    config = read_config(name, folder, max_rank)
    tensors = _load_tensors(name, folder)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise InvalidRequest(f"adapter '{name}': unsupported tensor {key!r} (only LoRA A/B of Linear layers)",
                                 param="src")
        halves.setdefault(match["module"], {})[match["part"]] = tensor
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, parts in halves.items():
        if module not in shapes:
            raise InvalidRequest(f"adapter '{name}' does not match this base model: it adapts {module!r},"
                                 " which is not a Linear layer of the model", param="src")
        if set(parts) != {"A", "B"}:
            raise InvalidRequest(f"adapter '{name}': {module!r} lacks its lora_A or lora_B", param="src")
        a, b = parts["A"], parts["B"]
        features_in, features_out = shapes[module]
        if a.shape != (config.rank, features_in) or b.shape != (features_out, config.rank):
            raise InvalidRequest(
                f"adapter '{name}' does not match this base model: {module!r} is {features_in}->{features_out},"
                f" the adapter's A/B are {tuple(a.shape)}/{tuple(b.shape)} (rank {config.rank})", param="src",
            )
        pairs[module] = (a.to(dtype), b.to(dtype))
    if not pairs:
        raise InvalidRequest(f"adapter '{name}': no LoRA weights in {folder}", param="src")
    return AdapterWeights(name=name, folder=folder, config=config, pairs=pairs)


def _load_tensors(name: str, folder: Path) -> dict[str, torch.Tensor]:
    safetensors = folder / "adapter_model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors), device="cpu")
    pickled = folder / "adapter_model.bin"
    if pickled.is_file():
        return torch.load(pickled, map_location="cpu", weights_only=True)
    raise InvalidRequest(f"adapter '{name}': {folder} has no adapter_model.safetensors or adapter_model.bin",
                         param="src")


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of the model (lm_head excepted): module path -> (in_features, out_features)."""
    return {path: (m.in_features, m.out_features) for path, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and path != "lm_head"}
