"""The model process's ROUTER over real zmq sockets, with a scripted fake engine and the tiny tokenizer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from berth_server import ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest, SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.engines.base import Engine, EngineLoadInfo, EngineRequest, EngineStep
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.server import ModelServer
from berth_server.model_process.text_pipeline import TextPipeline
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(60)
WAIT_S = 10.0


class FakeEngine(Engine):
    """Replays the token ids of `script`, one per step; `gate` (when set) holds every step."""

    name = "fake"

    def __init__(self, script: list[int], gate: asyncio.Event | None = None, reject: Exception | None = None):
        self.script = script
        self.reject = reject
        self.gate = gate
        self.step_delay_s = 0.0  # > 0 paces the steps like a real engine
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.closed: list[str] = []

    async def start(self) -> EngineLoadInfo:
        return EngineLoadInfo("fake", "cpu", "float32", max_model_len=256, max_batch_size=8)

    def check(self, request: EngineRequest) -> None:
        if self.reject is not None:
            raise self.reject

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineStep]:  # type: ignore[override]
        self.running.add(request.request_id)
        try:
            for n in range(request.max_new_tokens):
                if self.gate is not None:
                    await self.gate.wait()
                token = self.script[n % len(self.script)]
                last = n + 1 == request.max_new_tokens
                finish = "eos" if token in request.stop_token_ids else ("length" if last else None)
                prompt = [None, *[-1.0] * (len(request.prompt_token_ids) - 1)] if n == 0 else None
                yield EngineStep([token], finish=finish,  # type: ignore[arg-type]
                                 prompt_logprobs=prompt if request.sampling.prompt_logprobs else None)
                if finish:
                    return
                await asyncio.sleep(self.step_delay_s)
        finally:
            self.running.discard(request.request_id)
            self.closed.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def counts(self) -> tuple[int, int]:
        return len(self.running), 0

    async def shutdown(self) -> None:
        return None


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> TextPipeline:
    model_dir = build(RECIPES["tiny"], tmp_path_factory.getbasetemp() / "demo-tiny")
    config = ModelLaunchConfig(uid="m", source=str(model_dir), model_name="tiny")
    return TextPipeline.load(model_dir, config, Settings(), 256)


class Client:
    """A frontend worker's DEALER, collecting every EventBatch it receives."""

    def __init__(self, context: zmq.asyncio.Context, address: str):
        self.socket = context.socket(zmq.DEALER)
        self.socket.connect(address)
        self.batches: list[list[Any]] = []
        self.returned: set[int] = set()  # ids of the events until() has handed back

    async def send(self, message: Any) -> None:
        await self.socket.send(ipc.encode(message))

    async def until(self, done: Callable[[Any], bool]) -> Any:
        """The first event received so far (or next) that satisfies `done` and was not returned before."""
        async def loop() -> Any:
            while True:
                for event in (e for batch in self.batches for e in batch):
                    if id(event) not in self.returned and done(event):
                        self.returned.add(id(event))
                        return event
                self.batches.append(ipc.decode_event_batch(await self.socket.recv()).events)
        return await asyncio.wait_for(loop(), WAIT_S)

    def events(self, request_id: str) -> list[Any]:
        return [e for batch in self.batches for e in batch if getattr(e, "request_id", None) == request_id]


def finished(request_id: str) -> Callable[[Any], bool]:
    return lambda e: e.request_id == request_id and (
        isinstance(e, Failure) or (isinstance(e, Delta) and e.finish_reason is not None))


def serve(pipeline: TextPipeline, engine: FakeEngine, tmp_path: Path,
          test: Callable[[ModelServer, Client], Awaitable[None]], **settings: Any) -> None:
    """Run `test` against a bound server on an ipc socket in tmp_path."""
    async def main() -> None:
        server = ModelServer(Settings(**settings), f"ipc://{tmp_path}/m.sock", engine=engine, pipeline=pipeline)
        server.bind()
        stop = asyncio.Event()
        serving = asyncio.ensure_future(server.serve(stop))
        client = Client(zmq.asyncio.Context.instance(), server.address)
        try:
            await test(server, client)
        finally:
            stop.set()
            await asyncio.wait_for(serving, WAIT_S)
            await server.drain(1.0)
            server.close()
            client.socket.close(linger=0)
    asyncio.run(main())


def gen(request_id: str, **fields: Any) -> ipc.Generate:
    fields.setdefault("prompt", "Hello")
    return ipc.Generate(GenerateRequest(request_id=request_id, model="m", **fields))


def test_generate_streams_accepted_then_deltas_and_counts(pipeline: TextPipeline, tmp_path: Path) -> None:
    script = pipeline.encode(" streaming 😀 text", False)
    engine = FakeEngine(script)

    async def test(server: ModelServer, client: Client) -> None:
        engine.gate = asyncio.Event()  # both requests in the batch before the first step, as in a real engine
        await client.send(gen("a", sampling=SamplingParams(max_new_tokens=len(script))))
        await client.send(gen("b", sampling=SamplingParams(max_new_tokens=len(script))))
        await client.until(lambda e: isinstance(e, Accepted) and e.request_id == "a")
        await client.until(lambda e: isinstance(e, Accepted) and e.request_id == "b")
        engine.gate.set()
        await client.until(finished("a"))
        await client.until(finished("b"))
        events = client.events("a")
        assert isinstance(events[0], Accepted) and events[0].prompt_tokens == len(pipeline.encode("Hello", True))
        assert "".join(e.text for e in events[1:]) == " streaming 😀 text"
        assert events[-1].finish_reason == "length" and events[-1].completion_tokens == len(script)
        # Both streams progress together: their events share frames (one EventBatch per peer per turn).
        assert any({e.request_id for e in batch} == {"a", "b"} for batch in client.batches)
        await client.send(ipc.StatsQuery(request_id="s"))
        stats = await client.until(lambda e: isinstance(e, ipc.ModelStats))
        assert (stats.requests_total, stats.finished_total, stats.aborted_total, stats.running) == (2, 2, 0, 0)
        assert stats.generated_tokens_total == 2 * len(script)
        assert stats.prompt_tokens_total == 2 * events[0].prompt_tokens

    serve(pipeline, engine, tmp_path, test)


def test_stop_string_finishes_and_aborts_the_engine_request(pipeline: TextPipeline, tmp_path: Path) -> None:
    engine = FakeEngine(pipeline.encode("say hello STOP and then more", False))

    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("s", sampling=SamplingParams(max_new_tokens=50, stop=("STOP",))))
        last = await client.until(finished("s"))
        assert (last.finish_reason, last.stop_sequence) == ("stop", "STOP")
        assert "".join(e.text for e in client.events("s")[1:]) == "say hello "
        assert "s" in engine.aborted and "s" in engine.closed

    serve(pipeline, engine, tmp_path, test)


def test_abort_frees_the_request_and_counts_it(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        engine.gate = asyncio.Event()  # hold every step: the request stays in flight
        await client.send(gen("x", sampling=SamplingParams(max_new_tokens=50)))
        await client.until(lambda e: isinstance(e, Accepted))
        assert server.generating() == 1
        await client.send(ipc.Abort(request_id="x"))
        last = await client.until(finished("x"))
        assert last.finish_reason == "abort"
        await client.send(ipc.StatsQuery(request_id="s"))
        stats = await client.until(lambda e: isinstance(e, ipc.ModelStats))
        assert (stats.aborted_total, stats.running, server.generating()) == (1, 0, 0)
        assert "x" in engine.closed

    engine = FakeEngine(pipeline.encode("a b c", False))
    serve(pipeline, engine, tmp_path, test)


def test_over_the_concurrency_limit_is_overloaded(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        engine.gate = asyncio.Event()
        await client.send(gen("one"))
        await client.until(lambda e: isinstance(e, Accepted))
        await client.send(gen("two"))
        failure = await client.until(finished("two"))
        assert isinstance(failure, Failure) and failure.error_type == "overloaded"
        engine.gate.set()
        await client.send(ipc.Abort(request_id="one"))
        await client.until(finished("one"))

    engine = FakeEngine(pipeline.encode("a", False))
    serve(pipeline, engine, tmp_path, test, max_concurrent_requests=1)


def test_validation_tokenize_and_unsupported(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("long", prompt="word " * 300))
        failure = await client.until(finished("long"))
        assert isinstance(failure, Failure) and failure.error_type == "validation" and "255" in failure.message
        await client.send(ipc.Tokenize(request_id="t", text="Hello"))
        tokenized = await client.until(lambda e: isinstance(e, ipc.Tokenized))
        assert [s.id for s in tokenized.tokens] == pipeline.encode("Hello", True)
        await client.send(ipc.Embed(request_id="e", texts=["x"]))
        failure = await client.until(lambda e: e.request_id == "e")
        assert isinstance(failure, Failure) and failure.error_type == "validation"

    serve(pipeline, FakeEngine([5]), tmp_path, test)


def test_engine_rejection_fails_before_accepted(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("bad"))
        failure = await client.until(finished("bad"))
        assert client.events("bad") == [failure]  # no Accepted first: the frontend answers 4xx
        assert (failure.error_type, failure.message) == ("validation", "temperature must be >= 0")
        engine.reject = None
        await client.send(gen("ok", sampling=SamplingParams(max_new_tokens=2, prompt_logprobs=True)))
        await client.until(finished("ok"))
        accepted = client.events("ok")[0]
        assert isinstance(accepted, Accepted) and accepted.prefill is not None
        assert [t.logprob for t in accepted.prefill] == [None, *[-1.0] * (accepted.prompt_tokens - 1)]

    engine = FakeEngine([9], reject=InvalidRequest("temperature must be >= 0"))
    serve(pipeline, engine, tmp_path, test)


class SlowToRefuseEngine(FakeEngine):
    """Learns that it refuses a request only after a while (as llama.cpp does, in its own thread)."""

    async def submit(self, request: EngineRequest) -> AsyncIterator[EngineStep]:
        await asyncio.sleep(0.3)  # far longer than any fixed grace period a server might wait
        if self.reject is not None:
            raise self.reject
        return self.generate(request)


def test_a_late_engine_refusal_still_fails_before_accepted(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("late-bad"))
        failure = await client.until(finished("late-bad"))
        assert client.events("late-bad") == [failure] and failure.error_type == "validation"

    engine = SlowToRefuseEngine([9], reject=InvalidRequest("grammar: unknown rule"))
    serve(pipeline, engine, tmp_path, test)


def test_a_slow_prompt_does_not_stall_other_streams(pipeline: TextPipeline, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prepare = pipeline.prepare

    def slow_prepare(request: GenerateRequest) -> Any:
        if request.request_id == "huge":
            time.sleep(1.0)  # a huge prompt's template + tokenizer work, blocking whatever thread runs it
        return prepare(request)

    monkeypatch.setattr(pipeline, "prepare", slow_prepare)

    async def test(server: ModelServer, client: Client) -> None:
        engine.step_delay_s = 0.01
        await client.send(gen("flowing", sampling=SamplingParams(max_new_tokens=20)))
        await client.until(lambda e: isinstance(e, Accepted))
        await client.send(gen("huge", sampling=SamplingParams(max_new_tokens=2)))
        await client.until(finished("huge"))
        await client.until(finished("flowing"))
        order = [(type(e).__name__, e.request_id) for batch in client.batches for e in batch]
        # "flowing" finished (~0.2 s of steps) while "huge" was still being prepared: the loop kept going.
        last_flowing = max(i for i, event in enumerate(order) if event == ("Delta", "flowing"))
        assert last_flowing < order.index(("Accepted", "huge"))

    engine = FakeEngine(pipeline.encode("one two three four", False))
    serve(pipeline, engine, tmp_path, test)


def test_drain_refuses_new_work_and_aborts_what_outlives_it(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        engine.gate = asyncio.Event()
        await client.send(gen("slow", sampling=SamplingParams(max_new_tokens=50)))
        await client.until(lambda e: isinstance(e, Accepted))
        await server.drain(0.05)
        assert (await client.until(finished("slow"))).finish_reason == "abort"
        await client.send(gen("late"))
        late = await client.until(finished("late"))
        assert isinstance(late, Failure) and late.error_type == "overloaded"

    engine = FakeEngine(pipeline.encode("a", False))
    serve(pipeline, engine, tmp_path, test)


def test_a_vanished_peer_has_its_requests_aborted(pipeline: TextPipeline, tmp_path: Path) -> None:
    async def test(server: ModelServer, client: Client) -> None:
        engine.gate = asyncio.Event()
        # Paced and long, so the generation is still running when the ROUTER notices the peer is gone.
        engine.step_delay_s = 0.02
        await client.send(gen("orphan", sampling=SamplingParams(max_new_tokens=240)))
        await client.until(lambda e: isinstance(e, Accepted))
        client.socket.close(linger=0)  # the worker died; the ROUTER forgets its identity
        engine.gate.set()  # tokens flow again, to nobody: sends fail with EHOSTUNREACH
        other = Client(zmq.asyncio.Context.instance(), server.address)
        try:
            for _ in range(200):  # bounded poll of the counters (no event to wait on from outside)
                await other.send(ipc.StatsQuery(request_id="s"))
                stats = await other.until(lambda e: isinstance(e, ipc.ModelStats))
                if stats.aborted_total == 1:
                    break
                await asyncio.sleep(0.02)
            assert (stats.aborted_total, stats.finished_total, server.generating()) == (1, 0, 0)
            assert "orphan" in engine.closed
        finally:
            other.socket.close(linger=0)

    engine = FakeEngine(pipeline.encode("a b", False))
    serve(pipeline, engine, tmp_path, test)


def test_n_choices_are_one_request_prepared_once(pipeline: TextPipeline, tmp_path: Path) -> None:
    script = pipeline.encode(" one two three", False)
    engine = FakeEngine(script)
    seen: list[EngineRequest] = []
    submit = engine.submit

    async def recording_submit(request: EngineRequest) -> AsyncIterator[EngineStep]:
        seen.append(request)
        return await submit(request)

    engine.submit = recording_submit  # type: ignore[method-assign]

    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("n3", n=3, sampling=SamplingParams(max_new_tokens=len(script), seed=41)))
        ends = [await client.until(finished("n3")) for _ in range(3)]
        events = client.events("n3")
        accepted = [e for e in events if isinstance(e, Accepted)]
        assert len(accepted) == 1 and accepted[0].prompt_text is None  # not asked for: not sent
        assert sorted(e.choice for e in ends) == [0, 1, 2] and all(e.finish_reason == "length" for e in ends)
        for choice in range(3):
            text = "".join(e.text for e in events if isinstance(e, Delta) and e.choice == choice)
            assert text == " one two three"
        assert [(r.request_id, r.sampling.seed) for r in seen] == [("n3", 41), ("n3/1", 42), ("n3/2", 43)]
        assert server.counters.requests_total == 1 and server.counters.prompt_tokens_total == len(
            seen[0].prompt_token_ids)  # templated and tokenized once, for all three

    serve(pipeline, engine, tmp_path, test)


def test_aborting_n_choices_aborts_every_one(pipeline: TextPipeline, tmp_path: Path) -> None:
    engine = FakeEngine(pipeline.encode(" word", False), gate=asyncio.Event())

    async def test(server: ModelServer, client: Client) -> None:
        await client.send(gen("ab", n=2, sampling=SamplingParams(max_new_tokens=50)))
        await client.until(lambda e: isinstance(e, Accepted) and e.request_id == "ab")
        await client.send(ipc.Abort(request_id="ab"))
        ends = [await client.until(finished("ab")) for _ in range(2)]
        assert sorted((e.choice, e.finish_reason) for e in ends) == [(0, "abort"), (1, "abort")]
        assert sorted(engine.aborted) == ["ab", "ab/1"]

    serve(pipeline, engine, tmp_path, test)
