"""Constrained decoding on the transformers engine with SmolLM2 (real weights): schemas, regex, choice,
token-level constraints, compile errors, and a constrained row beside free rows in one batch."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from berth_server.canonical import Constraint, GenerateRequest, SamplingParams
from berth_server.engines.constraints import ConstraintCompiler, choice_grammar
from berth_server.engines.transformers_engine import TransformersEngine
from berth_server.errors import InvalidRequest
from berth_server.launch_config import ModelLaunchConfig
from berth_server.model_process.text_pipeline import TextPipeline
from berth_server.settings import Settings

pytestmark = pytest.mark.timeout(300)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Rome"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a person as JSON.", "Who lives in Rome? Answer in JSON.", "Make up a friend.",
           "Give me a customer record.", "A famous painter, please.", "Tell me about your neighbour."]


@pytest.fixture(scope="module")
def served(smollm2_model: Path) -> Iterator[tuple[TextPipeline, TransformersEngine]]:
    config = ModelLaunchConfig(uid="smol", source=str(smollm2_model), model_name="smol")
    engine = TransformersEngine(smollm2_model, config, Settings(device="cpu"))
    info = asyncio.run(engine.start())
    pipeline = TextPipeline.load(smollm2_model, config, Settings(), info.max_model_len)
    yield pipeline, engine
    asyncio.run(engine.shutdown())


async def _generate(pipeline: TextPipeline, engine: TransformersEngine, rid: str, user: str,
                    sampling: SamplingParams) -> str:
    request = GenerateRequest(request_id=rid, model="smol", sampling=sampling,
                              messages=[{"role": "user", "content": user}])
    prepared = pipeline.prepare(request)
    if sampling.constraint is not None:
        prepared = await pipeline.constrain(prepared, sampling.constraint)
    ids = [t async for step in engine.generate(prepared.engine_request) for t in step.token_ids]
    return str(pipeline.tokenizer.decode(ids, skip_special_tokens=True))


def _run_all(served: tuple[TextPipeline, TransformersEngine], jobs: list[tuple[str, SamplingParams]]) -> list[str]:
    pipeline, engine = served

    async def run() -> list[str]:
        tasks = [_generate(pipeline, engine, f"r{i}", user, s) for i, (user, s) in enumerate(jobs)]
        return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout=240))

    return asyncio.run(run())


def _json(schema: dict[str, Any]) -> Constraint:
    return Constraint(kind="json_schema", value=json.dumps(schema))


def test_json_schema_output_validates_for_many_prompts_when_sampling(served: Any) -> None:
    jobs = [(p, SamplingParams(temperature=0.9, seed=i, max_new_tokens=60, constraint=_json(PERSON)))
            for i, p in enumerate(PROMPTS)]
    for text in _run_all(served, jobs):
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_gives_an_object(served: Any) -> None:
    sampling = SamplingParams(greedy=True, max_new_tokens=60, constraint=Constraint(kind="json_object"))
    [text] = _run_all(served, [("Describe a cat as a JSON object.", sampling)])
    assert isinstance(json.loads(text), dict)


def test_regex_and_choice_match_exactly(served: Any) -> None:
    regex = Constraint(kind="regex", value=r"[A-Z][a-z]{2,8} [0-9]{2}", param="guided_regex")
    choice = Constraint(kind="choice", choices=("yes", "no", "maybe \"so\""), param="guided_choice")
    jobs = [("Name and age?", SamplingParams(temperature=1.0, seed=s, max_new_tokens=20, constraint=regex))
            for s in range(3)]
    jobs += [("Is Paris in France?", SamplingParams(temperature=1.0, seed=s, max_new_tokens=10, constraint=choice))
             for s in range(3)]
    texts = _run_all(served, jobs)
    for text in texts[:3]:
        assert re.fullmatch(r"[A-Z][a-z]{2,8} [0-9]{2}", text), text
    for text in texts[3:]:
        assert text in choice.choices


def test_a_constrained_row_beside_free_rows_leaves_them_as_alone(served: Any) -> None:
    free = ["What is the capital of France?", "Name a colour.", "Count to five."]
    greedy = SamplingParams(greedy=True, max_new_tokens=24)
    alone = [_run_all(served, [(p, greedy)])[0] for p in free]
    constrained = SamplingParams(greedy=True, max_new_tokens=60, constraint=_json(PERSON))
    together = _run_all(served, [(free[0], greedy), ("Describe a person.", constrained), (free[1], greedy),
                                 (free[2], greedy)])
    assert [together[0], together[2], together[3]] == alone
    jsonschema.validate(json.loads(together[1]), PERSON)
    assert alone[0].startswith("The capital of France is Paris")


def test_logit_bias_allowed_token_ids_and_bad_words(served: Any) -> None:
    pipeline, _ = served
    [paris] = pipeline.encode(" Paris", False)[:1]
    bias = SamplingParams(greedy=True, max_new_tokens=4, logit_bias=((paris, 100.0),))
    allowed_ids = tuple(pipeline.encode(" yes no", False))
    allowed = SamplingParams(temperature=1.0, seed=1, max_new_tokens=6, allowed_token_ids=allowed_ids)
    banned = SamplingParams(greedy=True, max_new_tokens=24, bad_words=("Paris",))
    texts = _run_all(served, [("Hi", bias), ("Hi", allowed), ("What is the capital of France?", banned)])
    assert texts[0] == " Paris" * 4
    assert set(pipeline.encode(texts[1], False)) <= set(allowed_ids) and texts[1]
    assert "Paris" not in texts[2] and texts[2].startswith("The capital of France is")


@pytest.mark.parametrize(("constraint", "says"), [
    (Constraint(kind="json_schema", value='{"type": "nonsense"}'), "JSON schema cannot be compiled"),
    (Constraint(kind="json_schema", value="{not json"), "not valid JSON"),
    (Constraint(kind="regex", value="([a-z]", param="guided_regex"), "regex cannot be compiled"),
    (Constraint(kind="grammar", value="root ::= missing_rule", param="grammar"), "grammar cannot be compiled"),
    (Constraint(kind="choice", param="guided_choice"), "at least one"),
])
def test_constraints_that_cannot_compile_are_invalid_requests_naming_the_field(
        served: Any, constraint: Constraint, says: str) -> None:
    pipeline, _ = served
    compiler = ConstraintCompiler(pipeline.tokenizer, pipeline.vocab_size, pipeline.model_eos)
    with pytest.raises(InvalidRequest, match=says) as caught:
        compiler.compile(constraint)
    assert caught.value.param == constraint.param


def test_choice_grammar_escapes_quotes_and_backslashes() -> None:
    assert choice_grammar(['a"b', "c\\d"]) == 'root ::= "a\\"b" | "c\\\\d"'
