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
from berth_server.engines.llamacpp_constraints import constraint_fields, structural_tag_lark, to_gbnf
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


def test_xgrammar_ebnf_is_rewritten_in_gbnf_dialect() -> None:
    """Escapes GBNF lacks, xgrammar's unbounded repeats and its lookaheads (none of which llama.cpp parses)."""
    ebnf = r'root_a ::= ("{" "a\0b" x_y{0, -1} z{2, 2} [\-+\/] "_") (=(q [,}\]:]))'
    assert to_gbnf(ebnf) == r'root-a ::= ("{" "a\x00b" x-y{0,} z{2,2} [\x2D+\x2F] "_") '
    with pytest.raises(ValueError, match="Regex"):
        to_gbnf('s ::= Regex("^a+$", json_string=true)')


def _structural(fmt: dict[str, object]) -> Constraint:
    return Constraint(kind="structural_tag", value=json.dumps({"type": "structural_tag", "format": fmt}),
                      param="structured_outputs")


def test_tool_call_structures_become_llguidance_grammars() -> None:
    call = {"type": "tag", "begin": "<c>", "end": "</c>",
            "content": {"type": "json_schema", "json_schema": PERSON, "max_whitespace_cnt": 1}}
    grammar = structural_tag_lark(_structural({"type": "tags_with_separator", "tags": [call], "separator": "\n",
                                               "at_least_one": True, "stop_after_first": False}).value)
    assert grammar is not None and grammar.splitlines()[:2] == ["%llguidance {}", 'start: (tags1 ("\\n" tags1)*)']
    assert 'tags1: ("<c>" json0 "</c>")' in grammar and '"whitespace_flexible": false' in grammar
    assert structural_tag_lark(_structural({"type": "any_text"}).value) is None  # left to xgrammar's EBNF


def test_what_gbnf_cannot_express_is_a_4xx_naming_the_field() -> None:
    """A form llguidance is not given, whose xgrammar EBNF holds a Regex(...) macro."""
    tag = {"type": "tag", "begin": "<f>", "end": "</f>",
           "content": {"type": "json_schema", "json_schema": {"type": "string", "pattern": "^a+$"}}}
    with pytest.raises(InvalidRequest, match="Regex") as caught:
        constraint_fields(_request(constraint=_structural({"type": "triggered_tags", "triggers": ["<f>"],
                                                           "tags": [tag]})), 10)
    assert caught.value.param == "structured_outputs"


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("xllamacpp")
    from berth_server.engines.llamacpp_engine import LlamaCppEngine
    from berth_server.launch_config import ModelLaunchConfig
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


@pytest.mark.timeout(900)
def test_llamacpp_output_obeys_a_tool_call_structure_and_escaped_regex(  # type: ignore[no-untyped-def]
        engine, smollm2_gguf: Path) -> None:
    from berth_server.protocols.tool_syntax import ToolChoice, tool_constraint

    tool = {"type": "function", "function": {"name": "who", "parameters": PERSON}}
    constraint = tool_constraint([tool], ToolChoice("named", "who"), "hermes", False)
    text = _text(engine, smollm2_gguf, "Describe a person.", temperature=0.8, seed=4, constraint=constraint)
    found = re.fullmatch(r'<tool_call>\n\{"name": "who", "arguments": (.*)\}\n</tool_call>', text, re.DOTALL)
    assert found, text
    jsonschema.validate(json.loads(found.group(1)), PERSON)
    number = _text(engine, smollm2_gguf, "A temperature?", temperature=1.0, seed=5,
                   constraint=Constraint(kind="regex", value=r"[\-+][0-9]{2}\.[0-9]"))
    assert re.fullmatch(r"[\-+][0-9]{2}\.[0-9]", number), number
