"""Checks of the fake gateway's default script (tests/unit/fakes/gateway.py), as the frontend tests use it."""

from __future__ import annotations

from berth_server.canonical import GenerateRequest

from tests.unit.fakes.gateway import WORDS, FakeGateway


def test_fake_stream_finishes_with_length() -> None:
    gateway = FakeGateway()
    stream = gateway.generate(GenerateRequest(request_id="r", model="default"))
    deltas = list(stream)
    assert "".join(d.text for d in deltas) == "".join(WORDS)
    assert deltas[-1].finish_reason == "length" and stream.finished


def test_n_choices_interleave_and_batches_flush_at_the_end() -> None:
    gateway = FakeGateway(words=["a", "b", "c"])
    stream = gateway.generate(GenerateRequest(request_id="r", model="default", n=2))
    batches = list(stream.batches())
    assert [[(d.choice, d.text) for d in b] for b in batches] == [
        [(0, "a"), (1, "a")], [(0, "b"), (1, "b")], [(0, "c")], [(1, "c")]]
