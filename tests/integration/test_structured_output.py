"""Structured output and forced tool calls on SmolLM2 (real weights), through the real clients, per engine.

One server per engine. The transformers server reads tool calls with the hermes parser, so forced
calls are written in hermes markup; the vLLM server has no parser, so they take vLLM's JSON form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from text_generation import Client
from text_generation.errors import ValidationError
from text_generation.types import Grammar, GrammarType

from tests.integration.conftest import RunningServer, checkpoint_engines, launch_serve

pytestmark = pytest.mark.timeout(900)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0,
                                                                         "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False,
}
PROMPTS = ["Describe a person.", "Invent a character for a story.", "Who is your best friend?",
           "Tell me about a pilot.", "A customer record, please.", "Name an old painter."]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 20}},
                                                "required": ["city"], "additionalProperties": False}}}
SMALL = {"type": "integer", "minimum": 0, "maximum": 999}  # unbounded integers let a small model write digits forever
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
    "a": SMALL, "b": SMALL}, "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module", params=checkpoint_engines())
def server(request: pytest.FixtureRequest, smollm2_model: Path, tmp_path_factory: pytest.TempPathFactory,
           smollm2_servers: Callable[[str], RunningServer]) -> Iterator[RunningServer]:
    """vLLM without a tool-call parser (the shared SmolLM2 server); transformers with the hermes one."""
    engine = request.param
    if engine == "vllm":
        yield smollm2_servers(engine)  # the same env: a second vLLM load costs half a minute
        return
    env = {"BERTH_MODEL_UID": "smol", "BERTH_TOOL_CALL_PARSER": "hermes"}
    running = launch_serve(smollm2_model, tmp_path_factory.mktemp(f"structured-{engine}"), engine=engine, env=env)
    yield running
    running.stop()


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", timeout=300)


def _chat(server: RunningServer, user: str, **kw: Any) -> Any:
    return _client(server).chat.completions.create(model=server.model_uid, messages=[{"role": "user", "content": user}], **kw)


def _streamed_text(server: RunningServer, user: str, **kw: Any) -> str:
    chunks = _chat(server, user, stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_json_schema_validates_for_many_prompts_streaming_and_not(server: RunningServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def one(job: tuple[int, str]) -> str:
        i, prompt = job
        kw = {"response_format": fmt, "temperature": 0.8, "seed": i, "max_tokens": 60}
        if i % 2:
            return _streamed_text(server, prompt, **kw)
        return str(_chat(server, prompt, **kw).choices[0].message.content)

    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, enumerate(PROMPTS)))
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_vllm_extension_regex_choice_and_guided_fields_match_exactly(server: RunningServer) -> None:
    pattern = r"[A-Z][a-z]{2,7}-[0-9]{3}"
    regex = _chat(server, "Give me a code.", temperature=1.0, seed=1, max_tokens=20,
                  extra_body={"structured_outputs": {"regex": pattern}}).choices[0].message.content
    assert re.fullmatch(pattern, regex or ""), regex
    choices = ["positive", "negative", "neutral"]
    for body in ({"structured_outputs": {"choice": choices}}, {"guided_choice": choices}):
        answer = _streamed_text(server, "I love this film! Sentiment?", temperature=1.0, seed=2, max_tokens=10,
                                extra_body=body)
        assert answer in choices
    completion = _client(server).completions.create(model=server.model_uid, prompt="The answer is", max_tokens=10,
                                                    extra_body={"guided_regex": "(yes|no)"})
    assert completion.choices[0].text in ("yes", "no")


def test_tgi_grammar_through_the_client_and_invocations(server: RunningServer) -> None:
    client = Client(server.base_url, timeout=300)
    reply = client.generate("A person as JSON:", max_new_tokens=60,
                            grammar=Grammar(type=GrammarType.Json, value=PERSON))
    jsonschema.validate(json.loads(reply.generated_text), PERSON)
    streamed = "".join(r.token.text for r in client.generate_stream(
        "Year:", max_new_tokens=8, grammar=Grammar(type=GrammarType.Regex, value="(19|20)[0-9]{2}"))
        if not r.token.special)
    assert re.fullmatch("(19|20)[0-9]{2}", streamed), streamed
    body = {"inputs": "Pick:", "parameters": {"max_new_tokens": 5, "grammar": {"type": "regex", "value": "(red|blue)"}}}
    invoked = httpx.post(server.url("/invocations"), json=body, timeout=300).json()
    assert invoked[0]["generated_text"] in ("red", "blue")
    with pytest.raises(ValidationError):
        client.generate("x", grammar=Grammar(type=GrammarType.Regex, value="(unclosed"))


def _check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _finished_choice(server: RunningServer, user: str, **kw: Any) -> Any:
    """The first of three seeded samples that ends before max_tokens (a small model can spend them
    mid-call; such a reply must say "length" and carry no tool_calls)."""
    for seed in (0, 1, 2):
        reply = _chat(server, user, seed=seed, **kw)
        choice = reply.choices[0]
        if choice.finish_reason != "length":
            return choice
        assert reply.usage.completion_tokens == kw["max_tokens"] and not choice.message.tool_calls
    raise AssertionError(f"three samples of {user!r} all ran out of tokens")


def test_tool_choice_required_and_named_give_valid_calls(server: RunningServer) -> None:
    required = _finished_choice(server, "What is the weather in Paris?", tools=TOOLS, tool_choice="required",
                                max_tokens=120)
    assert required.finish_reason == "tool_calls"
    _check_calls(required.message.tool_calls or [], {"get_weather", "add"})
    named = _finished_choice(server, "Add two and three.", tools=TOOLS, max_tokens=60,
                             tool_choice={"type": "function", "function": {"name": "add"}})
    assert named.finish_reason == "stop"
    _check_calls(named.message.tool_calls or [], {"add"})
    single = _finished_choice(server, "Weather in Rome and in Oslo?", tools=TOOLS, tool_choice="required",
                              max_tokens=120, parallel_tool_calls=False, temperature=0.9)
    assert len(single.message.tool_calls or []) == 1


def test_a_tool_loop_replays_the_call_turn_as_the_client_returned_it(server: RunningServer) -> None:
    # The openai client gives the call turn back with content None; SmolLM2's template concatenates
    # content, so it must render as "" (as vLLM renders it), not fail as a 400.
    user = {"role": "user", "content": "What is the weather in Paris?"}
    called = _client(server).chat.completions.create(
        model=server.model_uid, messages=[user], tools=TOOLS, tool_choice="required",  # type: ignore[arg-type]
        max_tokens=120, temperature=0, parallel_tool_calls=False).choices[0].message
    assert called.content is None and called.tool_calls
    turn = called.model_dump(exclude_unset=True)
    result = {"role": "tool", "tool_call_id": called.tool_calls[0].id, "content": "18 degrees and sunny"}
    answer = _client(server).chat.completions.create(model=server.model_uid, messages=[user, turn, result],
                                                     max_tokens=20, temperature=0)
    assert answer.choices[0].message.content


def _streamed_calls(server: RunningServer, **kw: Any) -> tuple[list[dict[str, Any]], str | None, int]:
    """Reassemble a streamed reply's tool calls: (calls in index order, finish_reason, pieces received)."""
    calls: dict[int, dict[str, Any]] = {}
    finish, pieces = None, 0
    for chunk in _chat(server, "Weather in Lyon?", stream=True, **kw):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            pieces += 1
            call = calls.setdefault(delta.index, {"name": None, "id": None, "arguments": ""})
            if delta.id:
                assert call["id"] is None and delta.function and delta.function.name  # first delta only
                call["id"], call["name"] = delta.id, delta.function.name
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert all(c["id"] for c in calls.values())
    return [calls[i] for i in sorted(calls)], finish, pieces


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def test_streamed_tool_call_arguments_reassemble_into_valid_json(server: RunningServer) -> None:
    # Sampled, so a small model sometimes spends max_tokens mid-call: then the finish_reason must be
    # "length" (a client would run a call that said "tool_calls"), and the whole reply must agree.
    # Every request is sent at once: a seeded row draws from its own generator, so the batch around it
    # does not change its tokens (and the streamed and whole replies of one seed must still agree).
    runs = [(choice, seed) for choice in ("required", {"type": "function", "function": {"name": "get_weather"}})
            for seed in (0, 1, 2)]

    def kwargs(run: tuple[Any, int]) -> dict[str, Any]:
        return {"tools": TOOLS, "tool_choice": run[0], "max_tokens": 120, "temperature": 1.0, "seed": run[1]}

    with ThreadPoolExecutor(2 * len(runs)) as pool:
        streamed = [pool.submit(_streamed_calls, server, **kwargs(run)) for run in runs]
        wholes = [pool.submit(_chat, server, "Weather in Lyon?", **kwargs(run)) for run in runs]
        results = [(run, s.result(), w.result().choices[0]) for run, s, w in zip(runs, streamed, wholes, strict=True)]
    whole_runs: dict[str, int] = {}
    for (choice, _), (calls, finish, pieces), whole in results:
        assert calls and finish == whole.finish_reason, (calls, finish, whole)
        key = json.dumps(choice)
        whole_runs.setdefault(key, 0)
        if finish == "length":
            assert not all(_parses(c["arguments"]) for c in calls)
            continue
        whole_runs[key] += 1
        assert pieces > 2 * len(calls)  # arguments arrive in pieces, not one blob at the end
        for call in calls:
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
            (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls or []]
    assert all(whole_runs.values()), f"every sampled run ran out of tokens for some tool_choice: {whole_runs}"


@pytest.mark.parametrize("body", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
    {"structured_outputs": {"regex": "(unclosed"}},
    {"guided_grammar": "root ::= undefined_rule"},
    {"guided_json": "{not json"},
])
def test_bad_constraints_are_400_naming_the_field(server: RunningServer, body: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(server, "hi", max_tokens=5, extra_body=body)
    field = next(iter(body))
    assert field in str(caught.value.body)


def test_a_constrained_row_and_free_rows_in_one_batch(server: RunningServer) -> None:
    free = ["What is the capital of France?", "Name three colours.", "Count to five."]
    alone = [_chat(server, p, temperature=0, max_tokens=20).choices[0].message.content for p in free]
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}

    def job(i: int) -> str:
        if i == len(free):
            return str(_chat(server, "Describe a person.", temperature=0, max_tokens=60,
                             response_format=fmt).choices[0].message.content)
        return str(_chat(server, free[i], temperature=0, max_tokens=20).choices[0].message.content)

    for _ in range(2):
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(job, range(len(free) + 1)))
        assert together[:-1] == alone
        jsonschema.validate(json.loads(together[-1]), PERSON)


def test_token_level_constraints_change_the_output(server: RunningServer) -> None:
    tokenize = httpx.post(server.url("/tokenize"), json={"inputs": " Paris"}, timeout=60).json()
    paris = tokenize[-1]["id"]
    biased = _chat(server, "Hi", temperature=0, max_tokens=3, logit_bias={str(paris): 100})
    assert biased.choices[0].message.content == " Paris" * 3
    banned = _chat(server, "What is the capital of France?", temperature=0, max_tokens=20,
                   extra_body={"bad_words": ["Paris"]}).choices[0].message.content
    assert "Paris" not in (banned or "") and (banned or "").startswith("The capital of France is")
    allowed = [t["id"] for t in httpx.post(server.url("/tokenize"), json={"inputs": " yes no"}, timeout=60).json()]
    only = _client(server).completions.create(model=server.model_uid, prompt="Answer:", max_tokens=4, temperature=1.0,
                                              extra_body={"allowed_token_ids": allowed, "return_tokens_as_token_ids":
                                                          True}, logprobs=0)
    assert {int(t.removeprefix("token_id:")) for t in only.choices[0].logprobs.tokens} <= set(allowed)


def test_list_prompts_and_truncate_prompt_tokens(server: RunningServer) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    many = _client(server).completions.create(model=server.model_uid, prompt=prompts, n=2, max_tokens=5, temperature=0)
    singles = [_client(server).completions.create(model=server.model_uid, prompt=p, max_tokens=5, temperature=0)
               for p in prompts]
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert [c.text for c in many.choices] == [singles[0].choices[0].text] * 2 + [singles[1].choices[0].text] * 2
    assert many.usage and many.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)
    cut = _client(server).completions.create(model=server.model_uid, prompt="ignore this. The capital of France is",
                                             max_tokens=5, temperature=0, extra_body={"truncate_prompt_tokens": 5})
    assert cut.usage and cut.usage.prompt_tokens == 5
