"""client/generation.py over the real gateway and zmq.green stand-ins: start, accept, fold, close, disconnect."""

from __future__ import annotations

from pathlib import Path

import gevent
import gevent.socket
import pytest
from berth_server import ipc
from berth_server.client.gateway import Gateway
from berth_server.client.generation import FinishReasons, start_generation
from berth_server.errors import ClientDisconnected, GenerationFailed, InvalidRequest

from tests.unit.test_frontend_gateway import FakeModel, request, runtime  # noqa: F401 - fixture


def test_start_relays_every_choice_and_closes(runtime: tuple[Gateway, FakeModel]) -> None:  # noqa: F811
    gateway, model = runtime
    generation = start_generation(gateway, [request("go"), request("go2")])
    deltas = [list(generation.deltas(index)) for index in range(2)]
    generation.close()
    assert ["".join(d.text for d in choice) for choice in deltas] == ["ab", "ab"]
    assert [choice[-1].finish_reason for choice in deltas] == ["length"] * 2
    assert generation.prompt_tokens == 4 and all(s.closed for s in generation.streams)  # each prompt once
    assert not any(isinstance(m, ipc.Abort) for m in model.received)  # finished: nothing to abort


def test_one_rejected_choice_closes_the_others(runtime: tuple[Gateway, FakeModel]) -> None:  # noqa: F811
    gateway, model = runtime
    with pytest.raises(InvalidRequest, match="too long"):
        start_generation(gateway, [request("hang"), request("reject")])
    with gevent.Timeout(2):
        while not any(isinstance(m, ipc.Abort) and m.request_id == "r-hang" for m in model.received):
            gevent.sleep(0.01)


def test_a_client_that_hangs_up_aborts_a_non_streaming_generation(
        runtime: tuple[Gateway, FakeModel]) -> None:  # noqa: F811
    from berth_server.http.replies import render
    from berth_server.protocols.reply import FoldRules, WireReply
    from flask import Flask

    gateway, model = runtime
    server_side, client_side = gevent.socket.socketpair()
    try:
        generation = start_generation(gateway, [request("hang")])
        events = ({"text": delta.text} for delta in generation.deltas())
        reply = WireReply([events], FoldRules(), lambda folded: folded[0], on_close=generation.close)
        with Flask(__name__).test_request_context(environ_overrides={"gunicorn.socket": server_side}):
            gevent.spawn_later(0.05, client_side.close)
            with gevent.Timeout(3), pytest.raises(ClientDisconnected):
                render(reply)
        with gevent.Timeout(2):
            while not any(isinstance(m, ipc.Abort) and m.request_id == "r-hang" for m in model.received):
                gevent.sleep(0.01)
    finally:
        server_side.close()


def test_each_wire_has_one_finish_reason_table() -> None:
    from berth_server.protocols.openai.service import FINISH_REASONS as OPENAI
    from berth_server.protocols.tgi.service import FINISH_REASONS as TGI

    assert [OPENAI.word(r) for r in ("length", "eos", "stop", None)] == ["length", "stop", "stop", "stop"]
    assert [TGI.word(r) for r in ("length", "eos", "stop", None)] == ["length", "eos_token", "stop_sequence", "length"]
    with pytest.raises(GenerationFailed):
        TGI.word("error")
    with pytest.raises(ValueError, match="not canonical"):
        FinishReasons({"end_turn": "stop"}, unknown="stop")  # tables speak only the canonical reasons


def test_no_service_folds_or_maps_finish_reasons_on_its_own() -> None:
    # Whole replies come from protocols/reply.py's fold of the streamed events, nowhere else.
    root = Path(__file__).resolve().parents[2] / "container" / "berth_server" / "protocols"
    for path in root.rglob("service.py"):
        text = path.read_text()
        assert "_FINISH" not in text and "class Fold" not in text and "def fold" not in text, path
        assert "jsonify" not in text and "sse_response" not in text, path  # replies are WireReplies


def test_choices_interleave_and_each_run_of_one_choice_merges() -> None:
    from berth_server.canonical import Delta
    from berth_server.client.generation import by_choice

    batch = [Delta(request_id="r", choice=0, text="a"), Delta(request_id="r", choice=0, text="b"),
             Delta(request_id="r", choice=1, text="x"), Delta(request_id="r", choice=0, text="c", finish_reason="stop"),
             Delta(request_id="r", choice=0, text="late")]
    merged = by_choice(batch)
    assert [(d.choice, d.text, d.finish_reason) for d in merged] == [
        (0, "ab", None), (1, "x", None), (0, "c", "stop"), (0, "late", None)]
