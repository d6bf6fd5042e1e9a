"""The real gateway and control client against in-process zmq.green ROUTER stand-ins (no processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from berth_server import control, ipc
from berth_server.canonical import Accepted, Delta, Failure, GenerateRequest
from berth_server.client.control_client import ControlClient
from berth_server.client.gateway import Gateway
from berth_server.errors import (
    Conflict,
    IncompleteGeneration,
    InvalidRequest,
    ModelTimeout,
    NotFound,
    NotReady,
    record_of,
)
from berth_server.settings import Settings

Script = Callable[[Any], list[Any]]


class FakeModel:
    """A ROUTER at the model address answering each message with the events `script` returns."""

    def __init__(self, runtime_dir: Path, uid: str, script: Script) -> None:
        self.received: list[Any] = []
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.bind(ipc.model_socket_address(runtime_dir, uid))
        self.script = script
        self.greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            identity, frame = self.socket.recv_multipart()
            message = ipc.decode_frontend_message(frame)
            self.received.append(message)
            events = self.script(message)
            if events:
                self.socket.send_multipart([identity, ipc.encode(ipc.EventBatch(events=events))])

    def close(self) -> None:
        self.greenlet.kill(block=True)
        self.socket.close(0)


class StaticControl:
    """Launcher stand-in for the gateway: a fixed status table."""

    def __init__(self, statuses: dict[str, Any]) -> None:
        self.statuses = statuses
        self.calls = 0

    def call(self, method: str, **params: Any) -> Any:
        self.calls += 1
        return self.statuses


def scripted(message: Any) -> list[Any]:
    """Accept a Generate and answer it with two deltas; ignore anything else."""
    if isinstance(message, ipc.Generate):
        rid = message.request.request_id
        if message.request.prompt == "reject":
            return [Failure(request_id=rid, message="too long", error_type="validation")]
        if message.request.prompt == "hang":
            return [Accepted(request_id=rid, prompt_tokens=1)]
        return [Accepted(request_id=rid, prompt_tokens=2), Delta(request_id=rid, text="a", completion_tokens=1),
                Delta(request_id=rid, text="b", completion_tokens=2, finish_reason="length")]
    if isinstance(message, ipc.StatsQuery):
        return [ipc.ModelStats(request_id=message.request_id, running=1)]
    return []


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Gateway, FakeModel]]:
    settings = Settings(runtime_dir=tmp_path, model_uid="m")
    statuses = {"m": {"uid": "m", "state": "ready"}, "other": {"uid": "other", "state": "loading"}}
    gateway = Gateway(settings, StaticControl(statuses), tmp_path, accept_timeout_s=0.5, event_timeout_s=0.5,
                      send_timeout_s=0.3, call_timeout_s=1.0, status_ttl_s=0.01, liveness_check_s=0.05)
    model = FakeModel(tmp_path, "m", scripted)
    yield gateway, model
    gateway.close()
    model.close()


def request(prompt: str) -> GenerateRequest:
    return GenerateRequest(request_id=f"r-{prompt}", model="m", prompt=prompt)


def test_generate_streams_deltas_in_order(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, model = runtime
    stream = gateway.generate(request("go"))
    assert stream.accepted.prompt_tokens == 2
    assert [d.text for d in stream] == ["a", "b"] and stream.finished
    stream.close()
    gevent.sleep(0.05)
    assert not any(isinstance(m, ipc.Abort) for m in model.received)  # finished: nothing to abort


def test_concurrent_streams_share_one_socket(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    streams = [gateway.generate(request(f"go{i}")) for i in range(8)]
    texts = gevent.joinall([gevent.spawn(lambda s=s: "".join(d.text for d in s)) for s in streams], timeout=5)
    assert [g.value for g in texts] == ["ab"] * 8
    assert len(gateway._clients) == 1


def test_failure_is_raised_typed(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    with pytest.raises(InvalidRequest, match="too long"):
        _ = gateway.generate(request("reject")).accepted


def test_close_aborts_an_unfinished_generation(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, model = runtime
    stream = gateway.generate(request("hang"))
    assert stream.accepted.prompt_tokens == 1
    stream.close()
    stream.close()  # idempotent
    with gevent.Timeout(2):
        while not any(isinstance(m, ipc.Abort) for m in model.received):
            gevent.sleep(0.01)
    assert list(stream) == []


def test_silent_model_gives_a_timeout(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    stream = gateway.generate(request("hang"))
    assert stream.accepted.prompt_tokens == 1
    with pytest.raises(ModelTimeout, match="stopped sending tokens") as caught:
        list(stream)
    from berth_server.protocols.openai.errors import OPENAI_ERRORS
    from berth_server.protocols.tgi.errors import TGI_ERRORS

    assert OPENAI_ERRORS.status(caught.value) == 504 and TGI_ERRORS.status(caught.value) == 424


def _flood(message: Any) -> list[Any]:
    """Accept, then send far more deltas at once than a worker may buffer for one request."""
    if isinstance(message, ipc.Generate):
        rid = message.request.request_id
        return [Accepted(request_id=rid, prompt_tokens=1)] + [
            Delta(request_id=rid, text="x", completion_tokens=i + 1) for i in range(100)]
    return []


def _gateway(tmp_path: Path, script: Script, **settings: Any) -> tuple[Gateway, FakeModel]:
    statuses = {"m": {"uid": "m", "state": "ready"}}
    gateway = Gateway(Settings(runtime_dir=tmp_path, model_uid="m", **settings), StaticControl(statuses), tmp_path,
                      accept_timeout_s=5, event_timeout_s=5, status_ttl_s=0.0, liveness_check_s=0.05)
    return gateway, FakeModel(tmp_path, "m", script)


def test_request_budget_ends_a_request_whose_model_keeps_it_waiting(tmp_path: Path) -> None:
    gateway, model = _gateway(tmp_path, scripted, request_timeout_s=0.3)
    try:
        stream = gateway.generate(request("hang"))
        with gevent.Timeout(3), pytest.raises(ModelTimeout, match="BERTH_REQUEST_TIMEOUT"):
            list(stream)
        gevent.sleep(0.05)
        assert any(isinstance(m, ipc.Abort) for m in model.received)
    finally:
        gateway.close()
        model.close()


def test_a_reader_that_falls_behind_is_ended_not_buffered_without_bound(tmp_path: Path) -> None:
    gateway, model = _gateway(tmp_path, _flood, stream_buffer_events=16)
    try:
        stream = gateway.generate(request("flood"))
        assert stream.accepted.prompt_tokens == 1
        gevent.sleep(0.2)  # every delta has arrived while nobody read
        with gevent.Timeout(3), pytest.raises(IncompleteGeneration, match="BERTH_STREAM_BUFFER"):
            for _ in stream:
                pass
        assert any(isinstance(m, ipc.Abort) for m in model.received)
    finally:
        gateway.close()
        model.close()


def test_missing_model_process_is_not_ready(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    with pytest.raises(NotReady):
        gateway.generate(GenerateRequest(request_id="x", model="absent", prompt="p"))


def test_resolve_model_and_readiness(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    assert gateway.resolve_model(None) == "m" and gateway.resolve_model("tgi") == "m"
    assert gateway.resolve_model("other") == "other"
    assert gateway.resolve_model("default") == "m"  # the README's placeholder, whatever the default's uid
    with pytest.raises(NotFound, match="model 'x' not found"):
        gateway.resolve_model("x")
    assert gateway.default_ready()
    assert gateway.stats("m").running == 1


class FakeLauncher:
    """A control ROUTER answering with a result or an error."""

    def __init__(self, runtime_dir: Path) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.bind(ipc.control_socket_address(runtime_dir))
        self.greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            identity, frame = self.socket.recv_multipart()
            call = control.decode_call(frame)
            if call.method == "ping":
                reply = control.ControlReply(result={"pong": call.params})
            elif call.method == "slow":
                continue
            else:
                reply = control.ControlReply(error=record_of(Conflict("exists")))
            self.socket.send_multipart([identity, control.encode(reply)])


def test_control_client_results_errors_and_timeout(tmp_path: Path) -> None:
    launcher = FakeLauncher(tmp_path)
    client = ControlClient(tmp_path, timeout_s=0.3)
    try:
        assert client.call("ping", x=1) == {"pong": {"x": 1}}
        with pytest.raises(Conflict, match="exists"):
            client.call("register")
        with pytest.raises(NotReady, match="slow"):
            client.call("slow", timeout_s=0.2)
    finally:
        launcher.greenlet.kill(block=True)
        launcher.socket.close(0)


def test_batches_group_deltas_that_arrived_together(runtime: tuple[Gateway, FakeModel]) -> None:
    gateway, _ = runtime
    stream = gateway.generate(request("together"))
    batches = list(stream.batches())
    assert [[d.text for d in batch] for batch in batches] == [["a", "b"]]


def test_a_restarted_model_fails_the_request_early(tmp_path: Path) -> None:
    statuses = {"m": {"uid": "m", "state": "ready", "description": {"pid": 1}}}
    gateway = Gateway(Settings(runtime_dir=tmp_path, model_uid="m"), StaticControl(statuses), tmp_path,
                      accept_timeout_s=30, event_timeout_s=30, status_ttl_s=0.0, liveness_check_s=0.05)
    model = FakeModel(tmp_path, "m", scripted)
    try:
        stream = gateway.generate(request("hang"))
        assert stream.accepted.prompt_tokens == 1
        statuses["m"] = {"uid": "m", "state": "ready", "description": {"pid": 2}}  # a new process took over
        with gevent.Timeout(5), pytest.raises(IncompleteGeneration, match="went away"):
            list(stream)
    finally:
        gateway.close()
        model.close()


def test_workers_read_the_launchers_table_at_once_and_drop_gone_models(tmp_path: Path) -> None:
    from berth_server.launch_config import ModelStatus
    from berth_server.model_table import TableWriter, table_path

    writer = TableWriter(table_path(tmp_path))
    writer.write({"m": ModelStatus(uid="m", state="ready")})
    control = StaticControl({})
    workers = [Gateway(Settings(runtime_dir=tmp_path, model_uid="m"), control, tmp_path, accept_timeout_s=5,
                       event_timeout_s=5) for _ in range(2)]
    model = FakeModel(tmp_path, "m", scripted)
    try:
        stream = workers[0].generate(request("hang"))
        assert stream.accepted.prompt_tokens == 1
        writer.write({"m": ModelStatus(uid="m", state="ready"), "x": ModelStatus(uid="x", state="starting")})
        assert [w.resolve_model("x") for w in workers] == ["x", "x"]  # the next request, on any worker
        writer.write({})  # m terminated: a waiting request fails at once instead of timing out
        assert all("m" not in w.statuses() for w in workers)
        with gevent.Timeout(2), pytest.raises(IncompleteGeneration, match="terminated"):
            list(stream)
        assert "m" not in workers[0]._clients and control.calls == 0  # no control RPC on the way
    finally:
        for worker in workers:
            worker.close()
        model.close()


def test_a_model_process_that_disconnects_fails_its_requests_at_once(tmp_path: Path) -> None:
    gateway, model = _gateway(tmp_path, scripted)
    try:
        stream = gateway.generate(request("hang"))
        assert stream.accepted.prompt_tokens == 1
        model.close()  # the process's socket goes away, as when it is killed
        with gevent.Timeout(2), pytest.raises(IncompleteGeneration, match="went away"):
            list(stream)
    finally:
        gateway.close()
