"""LoRA adapters on the transformers engine with SmolLM2: each row's output equals peft's, in one batch."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from berth_server.canonical import SamplingParams
from berth_server.engines.base import EngineRequest, EngineStep
from berth_server.engines.transformers_engine import TransformersEngine
from berth_server.errors import BerthError, InvalidRequest, NotFound
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import LoraSettings, Settings

pytestmark = pytest.mark.timeout(900)
QUESTIONS = ["What is the capital of France?", "Name a colour."]
N = 10


@pytest.fixture(scope="module")
def prompts(smollm2_model: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model)
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False))["input_ids"] for q in QUESTIONS]


@pytest.fixture(scope="module")
def engine(smollm2_model: Path) -> Iterator[TransformersEngine]:
    """Three device slots for four adapters: one pinned, so the other three share two (the LRU)."""
    config = ModelLaunchConfig(uid="smol", source=str(smollm2_model), model_name="smol")
    lora = LoraSettings(max_loras=3, max_lora_rank=16)
    engine = TransformersEngine(smollm2_model, config, Settings(device="cpu", lora=lora))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.shutdown())


def _run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout=600)

    return asyncio.run(bounded())


async def _ids(engine: TransformersEngine, rid: str, prompt: list[int], adapter: str | None) -> list[int]:
    request = EngineRequest(request_id=rid, prompt_token_ids=prompt, sampling=SamplingParams(greedy=True),
                            stop_token_ids=frozenset({2}), max_new_tokens=N, adapter=adapter)
    steps: list[EngineStep] = [s async for s in engine.generate(request)]
    return [t for s in steps for t in s.token_ids]


def test_adapters_and_base_in_one_batch_equal_peft(engine: TransformersEngine, smollm2_adapters: Any,
                                                   prompts: list[list[int]]) -> None:
    for name, folder in smollm2_adapters.folders.items():
        _run(engine.add_adapter(name, str(folder), folder, pin=name == "alpha"))
    described = {a["name"]: a for a in engine.adapters()}
    assert set(described) == set(smollm2_adapters.folders)
    assert described["alpha"]["pinned"] and described["alpha"]["loaded"] and described["charlie"]["rank"] == 16
    work = [(adapter, i) for adapter in [None, *smollm2_adapters.folders] for i in range(len(prompts))]

    async def everything() -> list[list[int]]:
        return await asyncio.gather(*(_ids(engine, f"r{k}", prompts[i], a) for k, (a, i) in enumerate(work)))

    outputs = _run(everything())
    for (adapter, i), got in zip(work, outputs, strict=True):
        assert got == smollm2_adapters.greedy(adapter, prompts[i], N), (adapter, i)
    assert len({tuple(o) for o in outputs[::2]}) == 5  # every adapter changes the answer
    resident = [a["name"] for a in engine.adapters() if a["loaded"]]
    assert "alpha" in resident and len(resident) == 3  # the bound holds; the pinned one stays
    assert engine.counts() == (0, 0)


def test_remove_then_use_is_not_found(engine: TransformersEngine, smollm2_adapters: Any,
                                      prompts: list[list[int]], tmp_path: Path) -> None:
    folder = tmp_path / "echo"
    shutil.copytree(smollm2_adapters.folders["bravo"], folder)
    _run(engine.add_adapter("echo", str(folder), folder))
    assert _run(_ids(engine, "e1", prompts[0], "echo")) == smollm2_adapters.greedy("bravo", prompts[0], N)
    _run(engine.remove_adapter("echo"))
    with pytest.raises(NotFound, match="echo"):
        _run(_ids(engine, "e2", prompts[0], "echo"))
    with pytest.raises(NotFound, match="echo"):
        _run(engine.remove_adapter("echo"))
    assert "echo" not in {a["name"] for a in engine.adapters()}


def test_bad_adapters_are_4xx_naming_them(engine: TransformersEngine, smollm2_adapters: Any,
                                          tmp_path: Path) -> None:
    from tests.lora_reference import make_foreign_adapter

    empty = tmp_path / "empty"
    empty.mkdir()
    cases: list[tuple[str, Path, str]] = [
        ("missing", tmp_path / "nowhere", "does not exist"),
        ("empty", empty, "no adapter_config.json"),
        ("foreign", make_foreign_adapter(tmp_path), "does not match this base model"),
        ("../etc", smollm2_adapters.folders["alpha"], "invalid"),
        ("alpha", smollm2_adapters.folders["alpha"], "already registered"),
    ]
    for name, folder, why in cases:
        with pytest.raises(BerthError, match=why) as caught:
            _run(engine.add_adapter(name, str(folder), folder))
        assert 400 <= caught.value.status < 500
    with pytest.raises(NotFound, match="nobody"):
        _run(_ids(engine, "u", [1, 2, 3], "nobody"))


def test_rank_above_the_limit_is_refused(smollm2_adapters: Any) -> None:
    from berth_server.engines.lora_weights import read_config

    with pytest.raises(InvalidRequest, match="rank 16 is above this engine's max LoRA rank 8"):
        read_config("charlie", smollm2_adapters.folders["charlie"], max_rank=8)


def test_all_slots_pinned_is_429_not_a_hang(tmp_path: Path) -> None:
    """One slot, pinned: a request for another adapter fails at once (it would wait forever)."""
    from berth_server.demo_model import RECIPES, build
    from berth_server.errors import Overloaded
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tiny = build(RECIPES["tiny"], tmp_path / "tiny")
    for name in ("one", "two"):
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                              LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        peft.save_pretrained(str(tmp_path / name))
    config = ModelLaunchConfig(uid="tiny", source=str(tiny), model_name="tiny")
    engine = TransformersEngine(tiny, config, Settings(device="cpu", lora=LoraSettings(max_loras=1)))

    async def scenario() -> tuple[list[int], BaseException | None]:
        await engine.start()
        try:
            await engine.add_adapter("one", "one", tmp_path / "one", pin=True)
            await engine.add_adapter("two", "two", tmp_path / "two")
            pinned = await _ids(engine, "p", [1, 5, 6], "one")
            try:
                await _ids(engine, "w", [1, 5, 6], "two")
            except BerthError as exc:
                return pinned, exc
            return pinned, None
        finally:
            await engine.shutdown()

    pinned, error = _run(scenario())
    assert 0 < len(pinned) <= N
    assert isinstance(error, Overloaded) and "pinned" in error.message
