"""The model process's text pipeline on demo://tiny's real tokenizer: detokenization, stops, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from berth_server.canonical import GenerateRequest, SamplingParams
from berth_server.demo_model import RECIPES, build
from berth_server.engines.base import EngineStep
from berth_server.errors import InputTooLong, InvalidRequest
from berth_server.ipc import Tokenize
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.detokenizer import IncrementalDetokenizer, StopMatcher
from berth_server.model_process.text_pipeline import Limits, TextPipeline
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(120)

TRICKY = [
    "Hello, streaming world!",
    "emoji 😀🎉👍🏽 and a family 👨‍👩‍👧 done",
    "中文字符 CJK 日本語のテキスト 한국어",
    "  leading   spaces\n\n\ttabs and trailing  ",
    "accents é à ü ñ ø — and “quotes”",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(RECIPES["tiny"], tmp_path_factory.getbasetemp() / "demo-tiny")


def make_pipeline(model_dir: Path, max_model_len: int = 2048, **config: object) -> TextPipeline:
    launch = ModelLaunchConfig(uid="m", source=str(model_dir), model_name="tiny", **config)  # type: ignore[arg-type]
    return TextPipeline.load(model_dir, launch, Settings(), max_model_len)


@pytest.fixture(scope="session")
def pipeline(tiny_dir: Path) -> TextPipeline:
    return make_pipeline(tiny_dir)


def request(**fields: object) -> GenerateRequest:
    return GenerateRequest(request_id="r", model="m", **fields)  # type: ignore[arg-type]


def stream_all(pipeline: TextPipeline, req: GenerateRequest, steps: list[EngineStep]) -> list:
    prepared = pipeline.prepare(req)
    out = pipeline.output_stream(req, prepared)
    deltas = []
    for step in steps:
        delta = out.process(step)
        if delta is not None:
            deltas.append(delta)
        if out.finished:
            break
    return deltas


@pytest.mark.parametrize("decode_stream", [True, False])
@pytest.mark.parametrize("text", TRICKY)
def test_streaming_concatenation_equals_one_shot_decode(pipeline: TextPipeline, text: str,
                                                        decode_stream: bool) -> None:
    tok = pipeline.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, use_decode_stream=decode_stream)
    streamed = "".join(detok.step(i) for i in ids) + detok.flush()
    assert streamed == tok.decode(ids) == text
    # With prompt context (the first generated token decodes after the prompt), still exact.
    prompt = tok.encode("Question: ", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids=prompt, use_decode_stream=decode_stream)
    assert "".join(detok.step(i) for i in ids) + detok.flush() == text


@pytest.mark.parametrize("decode_stream", [True, False])
def test_an_unfinished_character_flushes_like_one_shot_decode(pipeline: TextPipeline, decode_stream: bool) -> None:
    tok = pipeline.tokenizer
    ids = tok.encode("ok 😀", add_special_tokens=False)[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(tok, use_decode_stream=decode_stream)
    assert "".join(detok.step(i) for i in ids) == "ok "
    assert "ok " + detok.flush() == tok.decode(ids)


def test_special_tokens_are_skipped_except_kept_ones(pipeline: TextPipeline) -> None:
    tok = pipeline.tokenizer
    ids = tok.encode("a<think>b</think>c<|im_end|>", add_special_tokens=False)
    skip = pipeline.special_ids - {tok.convert_tokens_to_ids("<think>")}
    detok = IncrementalDetokenizer(tok, skip_ids=skip)
    assert "".join(detok.step(i) for i in ids) == "a<think>bc"


def test_stop_matcher_holds_only_a_possible_partial_match() -> None:
    matcher = StopMatcher(["STOP", "xyz"])
    assert matcher.feed("hello S") == ("hello ", None)
    assert matcher.feed("T") == ("", None)
    assert matcher.feed("AR") == ("STAR", None)  # not a stop after all: released
    assert matcher.feed(" ST") == (" ", None)
    assert matcher.feed("OP and more") == ("", "STOP")
    assert StopMatcher([]).feed("anything") == ("anything", None)
    held = StopMatcher(["END"])
    assert held.feed("the EN") == ("the ", None)
    assert held.flush() == "EN"


def test_stop_string_across_token_boundaries_cuts_text(pipeline: TextPipeline) -> None:
    text = "The answer is 42. END of the text and more words"
    ids = pipeline.tokenizer.encode(text, add_special_tokens=False)
    req = request(prompt="Q", sampling=SamplingParams(stop=("42. E",), max_new_tokens=100))
    deltas = stream_all(pipeline, req, [EngineStep([i]) for i in ids])
    assert "".join(d.text for d in deltas) == "The answer is "
    last = deltas[-1]
    assert (last.finish_reason, last.stop_sequence) == ("stop", "42. E")
    assert last.completion_tokens < len(ids)


def test_finish_mapping_counts_eos_and_flushes_held_text(pipeline: TextPipeline) -> None:
    eos = pipeline.tokenizer.eos_token_id
    ids = pipeline.tokenizer.encode("see you at EN", add_special_tokens=False)
    req = request(prompt="Q", sampling=SamplingParams(stop=("END",), max_new_tokens=100))
    steps = [EngineStep([i]) for i in ids] + [EngineStep([eos], finish="eos")]
    deltas = stream_all(pipeline, req, steps)
    assert "".join(d.text for d in deltas) == "see you at EN"  # the partial match is released at the end
    assert deltas[-1].finish_reason == "eos" and deltas[-1].completion_tokens == len(ids) + 1
    for engine_finish, canonical in (("length", "length"), ("abort", "abort")):
        deltas = stream_all(pipeline, req, [EngineStep(ids[:2], finish=engine_finish)])  # type: ignore[arg-type]
        assert deltas[-1].finish_reason == canonical


def test_token_details_carry_each_tokens_own_text_and_logprobs(pipeline: TextPipeline) -> None:
    ids = pipeline.tokenizer.encode("Hi there", add_special_tokens=False)
    req = request(prompt="Q", sampling=SamplingParams(logprobs=1, max_new_tokens=10))
    step = EngineStep(ids, logprobs=[-0.5] * len(ids), top_logprobs=[[(i, -0.5)] for i in ids], finish="length")
    (delta,) = stream_all(pipeline, req, [step])
    assert [t.id for t in delta.tokens] == ids
    assert "".join(t.text for t in delta.tokens) == "Hi there"
    assert delta.tokens[0].logprob == -0.5 and delta.tokens[0].top[0].id == ids[0]
    assert not any(t.special for t in delta.tokens)
    # Several tokens in one step and a stop string in the middle: nothing past it is reported.
    stopping = request(prompt="Q", token_details=True, sampling=SamplingParams(stop=(" th",), max_new_tokens=10))
    more = pipeline.tokenizer.encode("Hi there, you all", add_special_tokens=False)
    (delta,) = stream_all(pipeline, stopping, [EngineStep(more)])
    assert delta.text == "Hi" and delta.finish_reason == "stop"
    assert len(delta.tokens) == delta.completion_tokens < len(more)


def test_limits_resolve_from_context_and_config() -> None:
    config = ModelLaunchConfig(uid="m", source="x", model_name="x")
    assert Limits.resolve(config, Settings(), 100) == Limits(context=100, max_total=100, max_input=99)
    tight = ModelLaunchConfig(uid="m", source="x", model_name="x", max_total_tokens=50, max_input_tokens=20)
    assert Limits.resolve(tight, Settings(), 100) == Limits(context=100, max_total=50, max_input=20)
    default = ModelLaunchConfig(uid="m", source="x", model_name="x", is_default=True)
    assert Limits.resolve(default, Settings(max_total_tokens=64), 100).max_total == 64


def test_prompt_limits_name_both_numbers(tiny_dir: Path) -> None:
    pipeline = make_pipeline(tiny_dir, max_model_len=64, max_input_tokens=10)
    long_prompt = "word " * 30
    with pytest.raises(InputTooLong, match=r"has \d+ tokens.*maximum of 10 input tokens"):
        pipeline.prepare(request(prompt=long_prompt))
    truncated = pipeline.prepare(request(prompt=long_prompt, truncate=5))
    assert truncated.prompt_ids == pipeline.encode(long_prompt, True)[-5:]
    assert truncated.engine_request.max_new_tokens == 64 - 5  # None: up to max_total
    with pytest.raises(InputTooLong, match=r"\(5\) \+ max_new_tokens \(60\) = 65 exceeds the maximum of 64"):
        pipeline.prepare(request(prompt=long_prompt, truncate=5, sampling=SamplingParams(max_new_tokens=60)))
    with pytest.raises(InvalidRequest):
        pipeline.prepare(request(prompt=""))


def test_eos_set_and_ignore_eos(tiny_dir: Path) -> None:
    pipeline = make_pipeline(tiny_dir, stop_token_ids=[42])
    eos = pipeline.tokenizer.eos_token_id
    ids = pipeline.prepare(request(prompt="hi", sampling=SamplingParams(stop_token_ids=(7,)))).engine_request
    assert {eos, 42, 7} <= ids.stop_token_ids
    ignoring = pipeline.prepare(request(prompt="hi", sampling=SamplingParams(stop_token_ids=(7,), ignore_eos=True)))
    assert ignoring.engine_request.stop_token_ids == frozenset({7})


def test_chat_is_rendered_then_encoded_without_extra_specials(pipeline: TextPipeline) -> None:
    prepared = pipeline.prepare(request(messages=[{"role": "user", "content": "hi"}]))
    assert prepared.prompt_text.endswith("<|im_start|>assistant")
    assert prepared.prompt_ids == pipeline.encode(prepared.prompt_text, False)
    raw = pipeline.prepare(request(prompt_token_ids=[4, 5, 6]))
    assert raw.prompt_ids == [4, 5, 6]


def test_template_errors_are_validation_failures(tiny_dir: Path) -> None:
    strict = make_pipeline(tiny_dir, chat_template=(
        "{%- for m in messages -%}{%- if m['role'] not in ['user', 'assistant'] -%}"
        "{{ raise_exception('roles must be user or assistant') }}{%- endif -%}{{ m['content'] }}{%- endfor -%}"))
    with pytest.raises(InvalidRequest, match="roles must be user or assistant"):
        strict.prepare(request(messages=[{"role": "wizard", "content": "hi"}]))


def test_a_tool_call_turn_with_null_content_renders_as_empty_content(tiny_dir: Path) -> None:
    concatenating = make_pipeline(tiny_dir, chat_template="{%- for m in messages -%}{{ m['role'] + ':' + m['content'] }};"
                                  "{%- endfor -%}")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    prepared = concatenating.prepare(request(messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]))
    assert prepared.prompt_text == "user:hi;assistant:;tool:42;"


def test_tokenize_returns_spans_with_offsets(pipeline: TextPipeline) -> None:
    text = "Hello 世界"
    spans = pipeline.tokenize(Tokenize(request_id="t", text=text, add_special_tokens=False))
    assert [s.id for s in spans] == pipeline.encode(text, False)
    # TGI's convention: text is input[start:stop]; byte-level tokens of one character share its span.
    assert all(text[s.start:s.stop] == s.text for s in spans)
    assert spans[0].start == 0 and spans[-1].stop == len(text)
    chat = pipeline.tokenize(Tokenize(request_id="t", messages=[{"role": "user", "content": "hi"}]))
    assert chat[0].text == "<|im_start|>"


def test_token_ids_outside_the_vocabulary_are_refused_before_the_engine(pipeline: TextPipeline) -> None:
    vocab = pipeline.vocab_size
    assert pipeline.prepare(request(prompt_token_ids=[0, vocab - 1])).prompt_ids == [0, vocab - 1]
    for bad in (-1, vocab, 2**40):
        with pytest.raises(InvalidRequest, match=f"token id {bad} is out of range") as caught:
            pipeline.prepare(request(prompt_token_ids=[1, bad]))
        assert caught.value.param == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        pipeline.prepare(request(prompt="hi", sampling=SamplingParams(stop_token_ids=(vocab,))))
    assert caught.value.param == "stop_token_ids"


def test_family_stop_ids_past_the_vocabulary_are_dropped(tiny_dir: Path) -> None:
    # A catalog family's ids (Qwen's 151645) launched with a smaller tokenizer: vLLM would refuse every request.
    pipeline = make_pipeline(tiny_dir, stop_token_ids=[5, 151645])
    stops = pipeline.stop_ids(request(prompt="x"))
    assert 5 in stops and 151645 not in stops
