"""Constraints on llama.cpp: the completion-body fields (pure) and, on SmolLM2's GGUF, outputs that obey them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
import pytest
from berth_server.canonical import Constraint, SamplingParams
from berth_server.engines.base import EngineRequest
from berth_server.engines.llamacpp_constraints import constraint_fields
from berth_server.errors import InvalidRequest

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def _request(ids: list[int] | None = None, bad: tuple[tuple[int, ...], ...] = (), **sampling: object) -> EngineRequest:
    return EngineRequest("r", ids or [1, 2, 3], SamplingParams(**sampling), frozenset({2}), 48,  # type: ignore[arg-type]
                         bad_words_ids=bad)


def test_each_constraint_kind_maps_to_a_llamacpp_field() -> None:
    schema = constraint_fields(_request(constraint=Constraint(kind="json_schema", value=json.dumps(PERSON))), 10)
    assert schema == {"json_schema": PERSON}
    assert constraint_fields(_request(constraint=Constraint(kind="json_object")), 10) == {
        "json_schema": {"type": "object"}}
    assert constraint_fields(_request(constraint=Constraint(kind="choice", choices=("a", "b"))), 10) == {
        "grammar": 'root ::= "a" | "b"'}
    assert "root ::=" in constraint_fields(_request(constraint=Constraint(kind="regex", value="[0-9]{2}")), 10)["grammar"]


def test_token_biases_allowed_ids_and_bad_words() -> None:
    body = constraint_fields(_request(logit_bias=((3, 100.0),), allowed_token_ids=(3, 4), bad=((5,),)), 8)
    assert {t: v for t, v in body["logit_bias"]} == {3: 100.0, 0: False, 1: False, 2: False, 5: False,
                                                           6: False, 7: False}
    with pytest.raises(InvalidRequest) as caught:
        constraint_fields(_request(bad=((5, 6),)), 8)
    assert caught.value.param == "bad_words"


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("xllamacpp")
    from berth_server.engines.llamacpp_engine import LlamaCppEngine
    from berth_server.models.launch import ModelLaunchConfig
    from berth_server.settings import Settings

    config = ModelLaunchConfig(uid="g", source=str(smollm2_gguf), model_name="g")
    llama = LlamaCppEngine(smollm2_gguf, config, Settings(max_concurrent_requests=4))
    asyncio.run(llama.start())
    yield llama
    asyncio.run(llama.shutdown())


def _text(engine, smollm2_gguf: Path, user: str, **sampling: object) -> str:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
    request = EngineRequest("r", tokenizer.encode(prompt), SamplingParams(**sampling),  # type: ignore[arg-type]
                            frozenset({tokenizer.eos_token_id}), 60)

    async def run() -> list[int]:
        return [t async for step in engine.generate(request) for t in step.token_ids]

    return str(tokenizer.decode(asyncio.run(run()), skip_special_tokens=True))


@pytest.mark.timeout(900)
def test_llamacpp_output_obeys_a_json_schema(engine, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    for seed in range(3):
        text = _text(engine, smollm2_gguf, "Describe a person.", temperature=0.8, seed=seed,
                     constraint=Constraint(kind="json_schema", value=json.dumps(PERSON)))
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.timeout(900)
def test_llamacpp_output_obeys_regex_and_choice(engine, smollm2_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    code = _text(engine, smollm2_gguf, "A code?", temperature=1.0, seed=1,
                 constraint=Constraint(kind="regex", value="[A-Z][a-z]{2,7}-[0-9]{3}"))
    assert re.fullmatch("[A-Z][a-z]{2,7}-[0-9]{3}", code), code
    answer = _text(engine, smollm2_gguf, "Yes or no?", temperature=1.0, seed=2,
                   constraint=Constraint(kind="choice", choices=("yes", "no")))
    assert answer in ("yes", "no")
