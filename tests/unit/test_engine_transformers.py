"""The transformers engine on demo://tiny: equality with generate, continuous batching, aborts, logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from berth_server.canonical import SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.engines.base import EngineRequest, EngineStep
from berth_server.engines.transformers_engine import TransformersEngine
from berth_server.errors import BerthError, InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")
PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 100, 200, 300, 400, 500, 600, 700, 800]]
GREEDY = SamplingParams(greedy=True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(RECIPES["tiny"], tmp_path_factory.mktemp("tiny"))


def _engine(model_dir: Path, **settings: Any) -> Iterator[TransformersEngine]:
    config = ModelLaunchConfig(uid="tiny", source=str(model_dir), model_name="tiny")
    engine = TransformersEngine(model_dir, config, Settings(device="cpu", **settings))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.shutdown())


@pytest.fixture(scope="session")
def engine(tiny_dir: Path) -> Iterator[TransformersEngine]:
    yield from _engine(tiny_dir)


@pytest.fixture(scope="session")
def single(tiny_dir: Path) -> Iterator[TransformersEngine]:
    """An engine with one batch slot, to see queueing and freed slots."""
    yield from _engine(tiny_dir, max_batch_size=1)


@pytest.fixture(scope="session")
def model(tiny_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def _run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=60)

    return asyncio.run(bounded())


def _req(rid: str, prompt: list[int], sampling: SamplingParams = GREEDY, n: int = 12, **kw: Any) -> EngineRequest:
    return EngineRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling, max_new_tokens=n, **kw)


async def _collect(engine: TransformersEngine, request: EngineRequest) -> list[EngineStep]:
    return [step async for step in await engine.submit(request)]  # the model process's path: check, then run


def _ids(steps: list[EngineStep]) -> list[int]:
    return [t for s in steps for t in s.token_ids]


def _reference(model: Any, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_greedy_batch_equals_generate(engine: TransformersEngine, model: Any) -> None:
    async def scenario() -> list[list[EngineStep]]:
        return await asyncio.gather(*(_collect(engine, _req(f"g{i}", p, n=16)) for i, p in enumerate(PROMPTS)))

    for prompt, steps in zip(PROMPTS, _run(scenario()), strict=True):
        assert all(len(s.token_ids) == 1 for s in steps)
        assert [s.finish for s in steps] == [None] * 15 + ["length"]
        assert _ids(steps) == _reference(model, prompt, 16)
    assert engine.counts() == (0, 0)


def test_late_request_joins_the_running_batch(engine: TransformersEngine, model: Any) -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        events: list[str] = []
        started = asyncio.Event()

        async def long() -> list[int]:
            out = []
            async for step in engine.generate(_req("long", PROMPTS[0], n=300)):
                out += step.token_ids
                if len(out) == 3:
                    started.set()
            events.append("long done")
            return out

        async def late() -> list[int]:
            await started.wait()
            steps = await _collect(engine, _req("late", PROMPTS[1], n=4))
            events.append("late done")
            return _ids(steps)

        _, late_ids = await asyncio.gather(long(), late())
        return events, late_ids

    events, late_ids = _run(scenario())
    assert events == ["late done", "long done"]
    assert late_ids == _reference(model, PROMPTS[1], 4)  # merged into a padded cache, still exact


def test_seeded_sampling_is_reproducible_in_any_batch(engine: TransformersEngine) -> None:
    seeded = SamplingParams(temperature=1.0, seed=1234)

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        alone = _ids(await _collect(engine, _req("s1", PROMPTS[2], seeded, n=10)))
        crowd = [_collect(engine, _req(f"c{i}", p, SamplingParams(temperature=1.5), n=8))
                 for i, p in enumerate(PROMPTS)]
        mixed, *_ = await asyncio.gather(_collect(engine, _req("s2", PROMPTS[2], seeded, n=10)), *crowd)
        other = _ids(await _collect(engine, _req("s3", PROMPTS[2], SamplingParams(seed=99), n=10)))
        return alone, _ids(mixed), other

    alone, mixed, other = _run(scenario())
    assert alone == mixed
    assert alone != other


def test_abort_ends_with_abort_and_aclose_frees_the_slot(single: TransformersEngine, model: Any) -> None:
    async def scenario() -> tuple[list[EngineStep], tuple[int, int], list[int]]:
        steps: list[EngineStep] = []
        async for step in single.generate(_req("a", PROMPTS[0], n=500)):
            steps.append(step)
            if len(steps) == 2:
                await single.abort("a")
        stream = single.generate(_req("b", PROMPTS[0], n=2000))
        await stream.__anext__()
        queued = asyncio.ensure_future(_collect(single, _req("c", PROMPTS[1], n=3)))
        while single.counts() != (1, 1):  # c is queued behind b (bounded by the test timeout)
            await asyncio.sleep(0.005)
        counts = single.counts()
        doomed = asyncio.ensure_future(_collect(single, _req("d", PROMPTS[1], n=3)))
        while single.counts() != (1, 2):
            await asyncio.sleep(0.005)
        await single.abort("d")  # aborted while queued: ends at once, though b still holds the slot
        assert [(s.token_ids, s.finish) for s in await doomed] == [([], "abort")]
        await stream.aclose()  # frees b's slot, so c can run
        return steps, counts, _ids(await queued)

    steps, counts, queued_ids = _run(scenario())
    assert steps[-1].finish == "abort" and len(steps) < 500
    assert counts == (1, 1)
    assert queued_ids == _reference(model, PROMPTS[1], 3)


def test_logprobs_and_prompt_logprobs(engine: TransformersEngine, model: Any) -> None:
    prompt = PROMPTS[2]
    sampling = SamplingParams(greedy=True, logprobs=3, prompt_logprobs=True)

    async def scenario() -> list[list[EngineStep]]:
        others = [_collect(engine, _req(f"o{i}", p, n=4)) for i, p in enumerate(PROMPTS[:2])]
        return await asyncio.gather(_collect(engine, _req("lp", prompt, sampling, n=4)), *others)

    steps, *others = _run(scenario())
    for other, other_prompt in zip(others, PROMPTS, strict=False):
        assert _ids(other) == _reference(model, other_prompt, 4)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + _ids(steps)[:-1]])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    for k, step in enumerate(steps):
        assert step.logprobs is not None and step.top_logprobs is not None
        assert len(step.logprobs) == len(step.top_logprobs) == 1 and len(step.top_logprobs[0]) == 3
        best_id, best_lp = step.top_logprobs[0][0]
        assert best_id == step.token_ids[0] and best_lp == pytest.approx(step.logprobs[0])
        row = expected[len(prompt) - 1 + k]
        assert step.logprobs[0] == pytest.approx(float(row.max()), abs=1e-4)
    first = steps[0].prompt_logprobs
    assert first is not None and len(first) == len(prompt) and first[0] is None
    wanted = [float(expected[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    assert first[1:] == pytest.approx(wanted, abs=1e-4)
    assert all(s.prompt_logprobs is None for s in steps[1:])
    plain = _run(_collect(engine, _req("nolp", prompt, n=2)))
    assert all(s.logprobs is None and s.top_logprobs is None for s in plain)


def test_stop_token_ids_min_new_tokens_and_ignore_eos(engine: TransformersEngine, model: Any) -> None:
    ref = _reference(model, PROMPTS[0], 12)
    k = next(i for i in range(2, 12) if ref[i] not in ref[:i])
    stop = frozenset({ref[k]})
    steps = _run(_collect(engine, _req("eos", PROMPTS[0], n=12, stop_token_ids=stop)))
    assert _ids(steps) == ref[: k + 1] and steps[-1].finish == "eos"
    ignored = SamplingParams(greedy=True, ignore_eos=True)
    steps = _run(_collect(engine, _req("ign", PROMPTS[0], ignored, n=12, stop_token_ids=stop)))
    assert _ids(steps) == ref and steps[-1].finish == "length"
    first = frozenset({ref[0]})
    held = SamplingParams(greedy=True, min_new_tokens=1)
    steps = _run(_collect(engine, _req("min", PROMPTS[0], held, n=3, stop_token_ids=first)))
    assert steps[0].token_ids != [ref[0]] and steps[0].finish is None
    by_sampling = SamplingParams(greedy=True, stop_token_ids=(ref[0],))
    assert _run(_collect(engine, _req("sp", PROMPTS[0], by_sampling, n=5)))[-1].finish == "eos"


@pytest.mark.parametrize(
    "bad",
    [_req("bad", PROMPTS[0], SamplingParams(temperature=-0.5)), _req("bad", [1, 10**9]),
     _req("bad", []), _req("bad", PROMPTS[0], n=0), _req("bad", PROMPTS[0], SamplingParams(top_p=2.0))],
)
def test_an_invalid_request_fails_alone(engine: TransformersEngine, model: Any, bad: EngineRequest) -> None:
    async def scenario() -> tuple[list[int], BaseException | None]:
        good = asyncio.ensure_future(_collect(engine, _req("good", PROMPTS[1], n=6)))
        try:
            await _collect(engine, bad)
        except BerthError as exc:
            return _ids(await good), exc
        return _ids(await good), None

    good_ids, error = _run(scenario())
    assert isinstance(error, InvalidRequest)
    assert good_ids == _reference(model, PROMPTS[1], 6)
    assert engine.counts() == (0, 0)


def test_load_info(engine: TransformersEngine) -> None:
    assert engine.max_model_len == RECIPES["tiny"].max_position_embeddings
    assert engine.device == torch.device("cpu")


def test_cannot_serve_explains(tiny_dir: Path, tmp_path: Path) -> None:
    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny")
    assert TransformersEngine.cannot_serve(config, tiny_dir, Settings()) is None
    assert "config.json" in (TransformersEngine.cannot_serve(config, tmp_path, Settings()) or "")
    embedding = ModelLaunchConfig(uid="e", source=str(tiny_dir), model_name="e", model_type="embedding")
    assert "LLM" in (TransformersEngine.cannot_serve(embedding, tiny_dir, Settings()) or "")


def test_shutdown_ends_running_requests(tiny_dir: Path) -> None:
    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny", engine_args={"num_threads": 1})
    engine = TransformersEngine(tiny_dir, config, Settings(device="cpu"))

    async def scenario() -> tuple[int, BaseException | None, BaseException | None]:
        info = await engine.start()
        assert info.extra["cpu_threads"] == 1
        seen, error = 0, None
        try:
            async for _ in engine.generate(_req("x", PROMPTS[0], n=2000)):
                seen += 1
                if seen == 2:
                    await engine.shutdown()
        except BerthError as exc:
            error = exc
        try:
            await _collect(engine, _req("y", PROMPTS[0]))
        except BerthError as exc:
            return seen, error, exc
        return seen, error, None

    seen, during, after = _run(scenario())
    assert during is not None and seen < 2000
    assert after is not None


def test_dtype_from_the_launch_config(tiny_dir: Path) -> None:
    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny", dtype="bfloat16")
    engine = TransformersEngine(tiny_dir, config, Settings(device="cpu", dtype="float32"))

    async def scenario() -> tuple[str, list[EngineStep]]:
        info = await engine.start()
        try:
            return info.dtype, await _collect(engine, _req("bf", PROMPTS[0], SamplingParams(logprobs=1), n=4))
        finally:
            await engine.shutdown()

    dtype, steps = _run(scenario())
    assert dtype == "bfloat16"
    assert len(steps) == 4 and steps[-1].finish == "length"


def test_the_scheduler_batches_on_its_own(model: Any) -> None:
    """BatchScheduler needs only a model and its limits: slots, lock and thread are its own."""
    import queue as queue_mod

    from berth_server.engines.kv_tables import tables_for
    from berth_server.engines.transformers_rows import Slot
    from berth_server.engines.transformers_scheduler import BatchLimits, BatchScheduler

    cpu = torch.device("cpu")
    scheduler = BatchScheduler(model, cpu, BatchLimits(max_batch_size=2, max_model_len=512,
                                                       vocab_size=model.config.vocab_size),
                               tables_for(model, cpu, num_blocks=16, block_size=4))
    scheduler.start()
    outputs: list[queue_mod.Queue[Any]] = []
    try:
        for i, prompt in enumerate(PROMPTS):
            out: queue_mod.Queue[Any] = queue_mod.Queue()
            outputs.append(out)
            scheduler.submit(Slot(request=_req(f"s{i}", prompt, n=5), emit=out.put, stop_ids=frozenset()))
        for prompt, out in zip(PROMPTS, outputs, strict=True):
            steps = [out.get(timeout=60) for _ in range(5)]
            assert _ids(steps) == _reference(model, prompt, 5) and steps[-1].finish == "length"
        assert scheduler.counts() == (0, 0)
    finally:
        scheduler.stop()
    with pytest.raises(BerthError):
        scheduler.submit(Slot(request=_req("late", PROMPTS[0]), emit=print, stop_ids=frozenset()))


def test_repeated_prompts_reuse_cached_blocks_and_pins_hold_them(tiny_dir: Path, model: Any) -> None:
    """A prompt seen before is not recomputed (the engine's prefix counters say so), the answer is unchanged;
    blocks pinned under a key stay cached when other prompts need the whole pool, until unpinned."""
    import time

    from berth_server.engines.kv_forward import probe_shapes
    from berth_server.engines.kv_pool import block_bytes

    config = ModelLaunchConfig(uid="tiny", source=str(tiny_dir), model_name="tiny")
    per_block = block_bytes(probe_shapes(model, torch.device("cpu")), 4, model.dtype)
    # 13 blocks of 4 tokens (12 usable: 48 tokens), one request at a time.
    engine = TransformersEngine(tiny_dir, config, Settings(device="cpu", max_batch_size=1,
                                                           kv_cache_gb=13.5 * per_block / 2**30))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTH_KV_BLOCK_SIZE", "4")
        _run(engine.start())
    try:
        tables = engine.scheduler.tables
        assert tables.pool.num_blocks == 13
        prompt = list(range(10, 31))  # 5 full blocks and a token (no pad id: generate would mask it)
        expected = _reference(model, prompt, 3)

        def ask(p: list[int], rid: str) -> list[int]:
            return _ids(_run(_collect(engine, _req(rid, p, n=3))))

        assert ask(prompt, "p1") == expected
        assert engine.prefix_counts() == (21, 0)
        assert ask(prompt, "p2") == expected
        assert engine.prefix_counts() == (42, 20)
        engine.pin_prefix("session", prompt)
        deadline = time.monotonic() + 10
        while tables.pool.available() != 7 and time.monotonic() < deadline:  # pinned on the batching thread
            time.sleep(0.01)
        assert tables.pool.available() == 7  # 5 pinned blocks of 12
        other = list(range(200, 224))  # 24 tokens + 3 new: all 7 unpinned blocks, so the LRU is emptied
        assert ask(other, "o1") == _reference(model, other, 3)
        assert ask(prompt, "p3") == expected
        assert engine.prefix_counts()[1] == 20 + 20  # the pinned prompt was still there
        engine.unpin_prefix("session")
        # A SageMaker session's turn keeps its conversation pinned until the session closes.
        assert _ids(_run(_collect(engine, _req("s1", prompt, n=3, session_id="abc")))) == expected
        assert engine.pinned_sessions() == 1
        _run(engine.close_session("abc"))
        deadline = time.monotonic() + 10
        while engine.pinned_sessions() and time.monotonic() < deadline:  # unpinned on the batching thread
            time.sleep(0.01)
        assert engine.pinned_sessions() == 0
    finally:
        _run(engine.shutdown())
