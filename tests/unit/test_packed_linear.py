"""bfloat16 Linear weights packed for oneDNN: same outputs, the dense weights freed, float32 left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from berth_server.demo_model import RECIPES, build
from berth_server.engines import packed_linear
from berth_server.engines.packed_linear import pack_linear_weights, packing_available
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(RECIPES["tiny"], tmp_path_factory.mktemp("tiny"))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def test_packed_bfloat16_model_gives_the_same_logits(tiny_dir: Path) -> None:
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval()
    linears = [m for m in packed.modules() if type(m) is torch.nn.Linear]
    assert packed.get_output_embeddings() in linears  # untied here: packed like the others
    assert pack_linear_weights(packed) == len(linears) > 0
    assert all(m.weight.numel() == 0 for m in linears)  # the dense copies are gone
    _assert_same_logits(packed, plain)


def test_a_tied_output_embedding_is_packed_as_a_copy_only_while_small(tiny_dir: Path, monkeypatch) -> None:
    plain = _tied(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval())
    packed = _tied(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval())
    linears = [m for m in packed.modules() if type(m) is torch.nn.Linear]
    assert pack_linear_weights(packed) == len(linears)
    head = packed.get_output_embeddings()
    assert head.weight is packed.get_input_embeddings().weight and head.weight.numel() > 0  # the lookup reads it
    _assert_same_logits(packed, plain)
    monkeypatch.setattr(packed_linear, "_TIED_COPY_MAX_BYTES", 0)  # too big for a second copy: left alone
    again = _tied(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval())
    assert pack_linear_weights(again) == len(linears) - 1
    assert "forward" not in vars(again.get_output_embeddings())


def _tied(model: torch.nn.Module) -> torch.nn.Module:
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def _assert_same_logits(packed: torch.nn.Module, plain: torch.nn.Module) -> None:
    ids = torch.randint(3, packed.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(5))
    # Bit-identical on the AMD EPYC machines here; bfloat16's tolerance elsewhere (AMX kernels may order sums
    # differently) still catches a wrong layout, which changes every logit.
    torch.testing.assert_close(_logits(packed, ids), _logits(plain, ids), rtol=1.6e-2, atol=1e-2)


def test_float32_is_left_alone(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert pack_linear_weights(model) == 0
    assert all(m.weight.numel() > 0 for m in model.modules() if type(m) is torch.nn.Linear)
