"""Reasoning split (text sequences and demo://tiny-reasoning) and the thinking switch."""

from __future__ import annotations

from typing import Any

import pytest
from berth_server.canonical import GenerateRequest, SamplingParams
from berth_server.demo_model import CHAT_TEMPLATE, REASONING_CHAT_TEMPLATE, RECIPES, build
from berth_server.engines.base import EngineStep
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.reasoning import ReasoningSplitter, template_has_variable, thinking_kwargs
from berth_server.model_process.text_pipeline import TextPipeline
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(120)
TAGS: dict[str, Any] = {"reasoning_start_tag": "<think>", "reasoning_end_tag": "</think>"}


def split(chunks: list[str], in_reasoning: bool = False) -> tuple[str, str]:
    splitter = ReasoningSplitter("<think>", "</think>", in_reasoning)
    text, reasoning = [], []
    for chunk in chunks:
        t, r = splitter.feed(chunk)
        text.append(t)
        reasoning.append(r)
    t, r = splitter.flush()
    return "".join(text) + t, "".join(reasoning) + r


@pytest.mark.parametrize("chunking", ["whole", "chars", "pairs"])
def test_tags_never_leak_whatever_the_chunking(chunking: str) -> None:
    full = "<think>\nLet me think: 2 < 3.\n</think>\n\nThe answer is <b>yes</b>."
    chunks = {"whole": [full], "chars": list(full), "pairs": [full[i:i + 2] for i in range(0, len(full), 2)]}
    text, reasoning = split(chunks[chunking])
    assert reasoning == "Let me think: 2 < 3.\n"
    assert text == "The answer is <b>yes</b>."


def test_block_opened_by_the_prompt_starts_inside_reasoning() -> None:
    assert split(list("pondering</think>answer"), in_reasoning=True) == ("answer", "pondering")
    assert split(list("\n<think>\nhmm</think>ok"), in_reasoning=True) == ("ok", "hmm")  # re-emitted start tag
    assert split(["<th", "x</think>y"], in_reasoning=True) == ("y", "<thx")
    assert split(["no tags at all"]) == ("no tags at all", "")
    assert split(["unfinished <thi"]) == ("unfinished <thi", "")  # a held partial tag is released at the end
    assert ReasoningSplitter.opened_in_prompt("<|im_start|>assistant\n<think>\n", "<think>", "</think>")
    assert not ReasoningSplitter.opened_in_prompt("assistant\n<think>\n\n</think>\n\n", "<think>", "</think>")


def test_thinking_switch_sets_variables_and_refuses_without_a_switch() -> None:
    config = ModelLaunchConfig(uid="m", source="x", model_name="tiny", **TAGS)
    assert thinking_kwargs(False, {}, config, REASONING_CHAT_TEMPLATE) == {"enable_thinking": False, "thinking": False}
    assert thinking_kwargs(None, {"thinking": False}, config, REASONING_CHAT_TEMPLATE)["enable_thinking"] is False
    assert thinking_kwargs(None, {}, config, REASONING_CHAT_TEMPLATE) == {}
    named = ModelLaunchConfig(uid="m", source="x", model_name="tiny", thinking_variable="enable_thinking")
    assert thinking_kwargs(False, {}, named, REASONING_CHAT_TEMPLATE) == {"enable_thinking": False}
    with pytest.raises(InvalidRequest, match="chat template has no thinking switch"):
        thinking_kwargs(False, {}, config, CHAT_TEMPLATE)
    assert thinking_kwargs(True, {}, config, CHAT_TEMPLATE)["enable_thinking"] is True  # harmless
    assert template_has_variable(REASONING_CHAT_TEMPLATE, "enable_thinking")
    assert not template_has_variable(REASONING_CHAT_TEMPLATE, "thinking")


@pytest.fixture(scope="session")
def reasoning_pipeline(tmp_path_factory: pytest.TempPathFactory) -> TextPipeline:
    model_dir = build(RECIPES["tiny-reasoning"], tmp_path_factory.getbasetemp() / "demo-tiny-reasoning")
    config = ModelLaunchConfig(uid="m", source=str(model_dir), model_name="tiny-reasoning", **TAGS)
    return TextPipeline.load(model_dir, config, Settings(), 2048)


def run(pipeline: TextPipeline, output: str, **fields: object) -> tuple[str, str, bool]:
    req = GenerateRequest(request_id="r", model="m", messages=[{"role": "user", "content": "2+2?"}],
                          split_reasoning=True, sampling=SamplingParams(max_new_tokens=50), **fields)  # type: ignore[arg-type]
    prepared = pipeline.prepare(req)
    stream = pipeline.output_stream(req, prepared)
    ids = pipeline.tokenizer.encode(output, add_special_tokens=False) + [pipeline.tokenizer.eos_token_id]
    text, reasoning = "", ""
    for n, token in enumerate(ids):
        delta = stream.process(EngineStep([token], finish="eos" if n == len(ids) - 1 else None))
        if delta is not None:
            text, reasoning = text + delta.text, reasoning + delta.reasoning
    return text, reasoning, prepared.in_reasoning


def test_tiny_reasoning_template_opens_the_block_in_the_prompt(reasoning_pipeline: TextPipeline) -> None:
    text, reasoning, opened = run(reasoning_pipeline, "two plus two\n</think>\n\nIt is 4.")
    assert opened and (text, reasoning) == ("It is 4.", "two plus two\n")


def test_thinking_off_renders_a_closed_block(reasoning_pipeline: TextPipeline) -> None:
    text, reasoning, opened = run(reasoning_pipeline, "It is 4.", enable_thinking=False)
    assert not opened and (text, reasoning) == ("It is 4.", "")


def test_no_split_keeps_the_raw_text(reasoning_pipeline: TextPipeline) -> None:
    req = GenerateRequest(request_id="r", model="m", prompt="x", sampling=SamplingParams(max_new_tokens=50))
    stream = reasoning_pipeline.output_stream(req, reasoning_pipeline.prepare(req))
    ids = reasoning_pipeline.tokenizer.encode("a</think>b", add_special_tokens=False)
    delta = stream.process(EngineStep(ids, finish="length"))
    assert delta is not None and (delta.text, delta.reasoning) == ("ab", "")  # tags are special: skipped
