"""The fake gateway as the TGI and SageMaker unit tests use it (one token per word, model 'tiny'), and its checks."""

from __future__ import annotations

from berth_server.canonical import GenerateRequest, SamplingParams

from tests.unit.fakes.gateway import FakeGateway, FakeModel, token_script

WORDS = ["Hello", " world", " again", " and", " more"]
script_for = token_script(WORDS)


def tgi_gateway(ready: bool = True) -> FakeGateway:
    """Model 'tiny' (also 'tgi' and the default), one Delta per batch, a token per prompt character."""
    model = FakeModel(uid="tiny", names=(None, "", "tgi", "tiny"), others=(), abilities=["chat", "generate"],
                      max_input_tokens=1024, context_length=2048)
    return FakeGateway(script=script_for, model=model, ready=ready, per_batch=1, prompt_tokens=None)


def test_fake_script_honours_max_new_tokens_and_stop() -> None:
    """The fake itself: a limit gives 'length', a stop string gives 'stop'."""
    limited = script_for(GenerateRequest(request_id="a", model="m", sampling=SamplingParams(max_new_tokens=2)))
    assert [d.finish_reason for d in limited] == [None, "length"]
    stopped = script_for(GenerateRequest(request_id="b", model="m", sampling=SamplingParams(stop=("again",))))
    assert stopped[-1].finish_reason == "stop" and stopped[-1].stop_sequence == "again"
