"""The vLLM engine for real on the CPU (demo://tiny): determinism, stop ids, logprobs, aborts, parity.

One engine for the module (vLLM takes ~20-30 s to start here); every test runs on its event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from berth_server.canonical import SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.engines.base import EngineRequest, EngineStep
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]
T = TypeVar("T")
PROMPT = [1, 100, 200, 300, 400]
GREEDY = SamplingParams(greedy=True)
# float32 on both engines, so greedy tokens can be compared exactly (set, not left to the checkpoint-dtype default).
SETTINGS = Settings(device="cpu", dtype="float32", max_total_tokens=256, kv_cache_gb=1)


class Harness:
    """A started engine and the event loop it lives on."""

    def __init__(self, engine: object, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, 120))

    def collect(self, request: EngineRequest) -> list[EngineStep]:
        async def gather() -> list[EngineStep]:
            return [step async for step in self.engine.generate(request)]  # type: ignore[attr-defined]

        return self.run(gather())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(RECIPES["tiny"], tmp_path_factory.mktemp("tiny-vllm"))


@pytest.fixture(scope="module")
def vllm(tiny_dir: Path) -> Iterator[Harness]:
    from berth_server.engines.vllm_engine import VllmEngine

    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny")
    engine = VllmEngine(tiny_dir, config, SETTINGS)
    loop = asyncio.new_event_loop()
    harness = Harness(engine, loop)
    info = loop.run_until_complete(asyncio.wait_for(engine.start(), 240))
    assert (info.engine, info.device, info.dtype, info.max_model_len) == ("vllm", "cpu", "float32", 256)
    yield harness
    loop.run_until_complete(engine.shutdown())
    loop.close()


def _request(rid: str, sampling: SamplingParams = GREEDY, max_new: int = 12,
             stop: frozenset[int] = frozenset(), prompt: list[int] = PROMPT) -> EngineRequest:
    return EngineRequest(rid, list(prompt), sampling, stop, max_new)


def _tokens(steps: list[EngineStep]) -> list[int]:
    return [t for step in steps for t in step.token_ids]


def test_greedy_is_deterministic_and_streams_per_token(vllm: Harness) -> None:
    first = vllm.collect(_request("g1"))
    assert len(_tokens(first)) == 12 and first[-1].finish == "length"
    assert all(s.finish is None for s in first[:-1]) and len(first) >= 6  # incremental, not one blob

    async def together() -> list[list[EngineStep]]:
        async def one(rid: str) -> list[EngineStep]:
            return [s async for s in vllm.engine.generate(_request(rid))]  # type: ignore[attr-defined]

        return list(await asyncio.gather(*(one(f"g-{i}") for i in range(3))))

    for steps in vllm.run(together()):
        assert _tokens(steps) == _tokens(first)


def test_seeded_sampling_repeats(vllm: Harness) -> None:
    sampling = SamplingParams(temperature=1.0, top_k=50, seed=11)
    a, b = (_tokens(vllm.collect(_request(f"s{i}", sampling))) for i in range(2))
    assert a == b and len(a) == 12


def test_stop_token_ends_with_eos_and_is_reported(vllm: Harness) -> None:
    greedy = _tokens(vllm.collect(_request("base")))
    stop_id = greedy[4]
    cut = greedy.index(stop_id) + 1
    steps = vllm.collect(_request("stop", stop=frozenset({stop_id, 99999 % 2048})))
    assert _tokens(steps) == greedy[:cut] and steps[-1].finish == "eos"
    ignored = vllm.collect(_request("ign", SamplingParams(greedy=True, ignore_eos=True)))
    assert _tokens(ignored) == greedy and ignored[-1].finish == "length"
    min_tokens = vllm.collect(_request("min", SamplingParams(greedy=True, min_new_tokens=cut + 1),
                                       stop=frozenset({stop_id})))
    assert len(_tokens(min_tokens)) > cut


def test_logprobs_and_prompt_logprobs(vllm: Harness) -> None:
    sampling = SamplingParams(greedy=True, logprobs=2, prompt_logprobs=True)
    steps = vllm.collect(_request("lp", sampling, max_new=5))
    assert steps[0].prompt_logprobs is not None and len(steps[0].prompt_logprobs) == len(PROMPT)
    assert steps[0].prompt_logprobs[0] is None and all(v is not None and v < 0 for v in steps[0].prompt_logprobs[1:])
    assert all(s.prompt_logprobs is None for s in steps[1:])
    for step in steps:
        assert step.logprobs is not None and step.top_logprobs is not None
        assert len(step.logprobs) == len(step.token_ids) == len(step.top_logprobs)
        for token, logprob, top in zip(step.token_ids, step.logprobs, step.top_logprobs, strict=True):
            assert len(top) == 2 and top[0] == (token, logprob) and top[0][1] >= top[1][1]
    only_sampled = vllm.collect(_request("lp0", SamplingParams(greedy=True, logprobs=0), max_new=3))
    assert all(s.top_logprobs == [[]] * len(s.token_ids) for s in only_sampled)


def test_abort_and_early_close_free_the_request(vllm: Harness) -> None:
    async def abort_midway() -> list[EngineStep]:
        steps: list[EngineStep] = []
        async for step in vllm.engine.generate(_request("ab", max_new=200)):  # type: ignore[attr-defined]
            steps.append(step)
            if len(steps) == 2:
                await vllm.engine.abort("ab")  # type: ignore[attr-defined]
        return steps

    steps = vllm.run(abort_midway())
    assert steps[-1].finish == "abort" and len(_tokens(steps)) < 200

    async def close_early() -> tuple[int, int]:
        stream = vllm.engine.generate(_request("close", max_new=200))  # type: ignore[attr-defined]
        await stream.__anext__()
        await stream.aclose()
        return vllm.engine.counts()  # type: ignore[attr-defined,no-any-return]

    assert vllm.run(close_early()) == (0, 0)
    assert len(_tokens(vllm.collect(_request("after", max_new=3)))) == 3


def test_a_request_vllm_refuses_is_refused_by_submit_before_any_step(vllm: Harness) -> None:
    # vLLM's own validation (logprobs above its max_logprobs of 20) runs in add_request: submit raises it,
    # so the model process answers with a 4xx instead of starting a stream.
    with pytest.raises(InvalidRequest, match="vLLM rejected the request"):
        vllm.run(vllm.engine.submit(_request("lp100", SamplingParams(greedy=True, logprobs=100))))  # type: ignore[attr-defined]
    assert vllm.engine.counts() == (0, 0)  # type: ignore[attr-defined]
    assert len(_tokens(vllm.collect(_request("fine", max_new=2)))) == 2


def test_typical_p_is_rejected(vllm: Harness) -> None:
    with pytest.raises(InvalidRequest, match="typical_p"):
        vllm.collect(_request("tp", SamplingParams(typical_p=0.9)))


def test_greedy_matches_the_transformers_engine(vllm: Harness, tiny_dir: Path) -> None:
    try:
        from berth_server.engines.transformers_engine import TransformersEngine
    except ImportError as exc:
        pytest.skip(f"transformers engine unavailable: {exc}")
    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny")
    engine = TransformersEngine(tiny_dir, config, SETTINGS)

    greedy = _tokens(vllm.collect(_request("v")))
    stop = frozenset({greedy[3]})

    async def run_hf() -> tuple[list[int], list[EngineStep]]:
        await engine.start()
        try:
            plain = [t async for step in engine.generate(_request("hf")) for t in step.token_ids]
            stopped = [step async for step in engine.generate(_request("hf-stop", stop=stop))]
            return plain, stopped
        finally:
            await engine.shutdown()

    hf_tokens, hf_stopped = asyncio.run(run_hf())
    assert greedy == hf_tokens
    # A stop token ends both engines the same way and counts as a generated token on both.
    vllm_stopped = vllm.collect(_request("v-stop", stop=stop))
    assert _tokens(vllm_stopped) == _tokens(hf_stopped) and vllm_stopped[-1].finish == hf_stopped[-1].finish == "eos"
