"""Random, non-zero peft LoRA adapters for SmolLM2 made in the test session, and peft's own greedy output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# name -> (rank, alpha, target modules, rslora): different ranks, targets and scalings on purpose.
ADAPTER_SHAPES: dict[str, tuple[int, int, list[str], bool]] = {
    "alpha": (8, 16, ["q_proj", "v_proj"], False),
    "bravo": (4, 8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    "charlie": (16, 64, ["o_proj", "down_proj"], False),
    "delta": (8, 32, ["gate_proj", "up_proj"], True),
}


@dataclass
class PeftReference:
    """Adapter folders and a peft model that gives the reference output for each (adapter, prompt)."""

    base_dir: Path
    folders: dict[str, Path]
    _model: Any = None
    _cache: dict[tuple[str | None, tuple[int, ...], int], list[int]] = field(default_factory=dict)

    def greedy(self, adapter: str | None, prompt_ids: list[int], n: int) -> list[int]:
        """peft's greedy continuation of prompt_ids with this adapter (None: the base model), n tokens at most."""
        import torch

        key = (adapter, tuple(prompt_ids), n)
        if key not in self._cache:
            model = self._peft()
            with torch.inference_mode():
                if adapter is None:
                    with model.disable_adapter():
                        out = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
                else:
                    model.set_adapter(adapter)
                    out = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
            self._cache[key] = out[0, len(prompt_ids):].tolist()
        return self._cache[key]

    def _peft(self) -> Any:
        if self._model is None:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.base_dir).eval()
            names = list(self.folders)
            model = PeftModel.from_pretrained(base, self.folders[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(self.folders[name], adapter_name=name)
            self._model = model.eval()
        return self._model


def make_adapters(base_dir: Path, out: Path) -> dict[str, Path]:
    """Save one adapter per ADAPTER_SHAPES entry, with random (init_lora_weights=False) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    for i, (name, (rank, alpha, targets, rslora)) in enumerate(ADAPTER_SHAPES.items()):
        torch.manual_seed(1000 + i)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_rslora=rslora,
                            init_lora_weights=False)
        model = get_peft_model(base, config)
        folders[name] = out / name
        model.save_pretrained(str(folders[name]))
    return folders


def make_foreign_adapter(out: Path) -> Path:
    """A LoRA adapter trained for another base (demo://tiny, hidden size 64): SmolLM2 must refuse it."""
    from berth_server.demo_model import RECIPES, build
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tiny = build(RECIPES["tiny"], out / "tiny-base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(out / "foreign"))
    return out / "foreign"
