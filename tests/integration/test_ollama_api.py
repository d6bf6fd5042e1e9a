"""The Ollama API with the official `ollama` client, on the real SmolLM2 (each checkpoint engine) and the tiny
model (every engine): greedy answers equal the same conversation through /v1/chat/completions, and the
counts equal its usage; format and tools are enforced; embeddings equal /v1/embeddings'; the model
routes carry what Copilot-style clients read; what Berth does not do is a 4xx in Ollama's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from .conftest import RunningServer

pytestmark = pytest.mark.timeout(600)
MAX_NEW = 24
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": MAX_NEW}
# Ollama's done_reason for each OpenAI finish_reason.
DONE_REASONS = {"stop": "stop", "length": "length"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A JSON schema forcing the answer to be a call of get_weather, written as Ollama reads calls.
FORCED_CALL = {"type": "object", "properties": {
    "name": {"type": "string", "enum": ["get_weather"]},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                  "required": ["city"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False}


def clients(server: RunningServer) -> tuple[ollama.Client, openai.OpenAI]:
    """The official Ollama client and the OpenAI client, on the same server."""
    return (ollama.Client(host=server.base_url, timeout=300),
            openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0, timeout=300))


def openai_answer(oai: openai.OpenAI, model: str, messages: list[dict[str, Any]]) -> Any:
    """The same conversation, greedy, through /v1/chat/completions."""
    return oai.chat.completions.create(model=model, messages=messages, temperature=0,  # type: ignore[arg-type]
                                       max_tokens=MAX_NEW)


def assert_counts_equal_usage(last: Any, reference: Any) -> None:
    """The closing chunk's counts equal the OpenAI usage; its durations are measured, in nanoseconds."""
    assert last.done and last.done_reason == DONE_REASONS[reference.choices[0].finish_reason]
    assert (last.prompt_eval_count, last.eval_count) == (reference.usage.prompt_tokens,
                                                         reference.usage.completion_tokens)
    assert last.prompt_eval_duration > 0 and last.eval_duration > 0
    assert last.total_duration >= last.prompt_eval_duration + last.eval_duration


def together(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the calls at once (the model batches them: on a busy 2-core CPU, one batch instead of eight)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


RAW_PROMPT = "The capital of France is"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# A call and its result in Ollama's form (argument objects, tool_name) and in OpenAI's.
OLLAMA_HISTORY = [*ASK, {"role": "assistant", "content": "",
                         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather"}]
OPENAI_HISTORY = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": "call_1"}]


@pytest.fixture(scope="module")
def answers(smollm2_server: RunningServer) -> dict[str, Any]:
    """Every generation the tests below check, sent at once (per engine): Ollama's and the /v1 reference."""
    client, oai = clients(smollm2_server)
    short = {"temperature": 0, "num_predict": 8}
    return together({
        "reference": lambda: openai_answer(oai, "smollm2", QUESTION),
        "whole": lambda: client.chat("smollm2:latest", QUESTION, stream=False, options=GREEDY, keep_alive="5m"),
        "chunks": lambda: list(client.chat("smollm2", QUESTION, stream=True, options=GREEDY)),
        "generate": lambda: client.generate("smollm2", QUESTION[1]["content"], system=QUESTION[0]["content"],
                                            options=GREEDY),
        "raw": lambda: list(client.generate("smollm2", RAW_PROMPT, raw=True, stream=True, options=short)),
        "completion": lambda: oai.completions.create(model="smollm2", prompt=RAW_PROMPT, temperature=0, max_tokens=8),
        "called": lambda: client.chat("smollm2", ASK, tools=[WEATHER], format=FORCED_CALL,
                                      options={"temperature": 0, "num_predict": 40}),
        "follow_up": lambda: client.chat("smollm2", OLLAMA_HISTORY, tools=[WEATHER], options=short),
        "openai_follow_up": lambda: oai.chat.completions.create(
            model="smollm2", messages=OPENAI_HISTORY, tools=[WEATHER], temperature=0, max_tokens=8),  # type: ignore[arg-type]
    })


def test_chat_greedy_equals_openai_streamed_and_not(answers: dict[str, Any]) -> None:
    reference, whole, chunks = answers["reference"], answers["whole"], answers["chunks"]
    assert "Paris" in (reference.choices[0].message.content or "")
    assert whole.message.content == reference.choices[0].message.content and whole.model == "smollm2:latest"
    assert_counts_equal_usage(whole, reference)
    assert len(chunks) > 2 and all(not c.done for c in chunks[:-1])
    assert "".join(c.message.content or "" for c in chunks) == reference.choices[0].message.content
    assert_counts_equal_usage(chunks[-1], reference)


def test_generate_templates_like_chat_and_raw_equals_completions(answers: dict[str, Any]) -> None:
    reference, reply = answers["reference"], answers["generate"]
    assert reply.response == reference.choices[0].message.content
    assert_counts_equal_usage(reply, reference)
    raw, completion = answers["raw"], answers["completion"]
    assert "".join(part.response or "" for part in raw) == completion.choices[0].text
    assert (raw[-1].prompt_eval_count, raw[-1].eval_count) == (completion.usage.prompt_tokens,
                                                               completion.usage.completion_tokens)


def test_tools_with_a_format_forcing_the_call(answers: dict[str, Any]) -> None:
    """SmolLM2 has no tool syntax of its own: its JSON is read as Ollama reads calls, and `format` (a JSON
    schema, its properties in order) makes it one. A call and its result sent back in Ollama's form make
    the same prompt and answer as in OpenAI's."""
    called = answers["called"]
    (call,) = called.message.tool_calls or []
    assert call.function.name == "get_weather" and set(call.function.arguments) == {"city"}
    assert called.message.content == "" and called.done_reason == "stop"
    follow_up, reference = answers["follow_up"], answers["openai_follow_up"]
    assert follow_up.message.content == reference.choices[0].message.content
    assert follow_up.prompt_eval_count == reference.usage.prompt_tokens


def test_models_are_listed_shown_and_refused_in_ollamas_shape(smollm2_server: RunningServer) -> None:
    client, oai = clients(smollm2_server)
    listed = {m.model: m for m in client.list().models}
    smollm2 = listed["smollm2:latest"]
    assert smollm2.details is not None and smollm2.details.family == "llama"
    assert smollm2.details.format == "safetensors" and smollm2.details.parameter_size == "134.52M"
    assert smollm2.size is not None and smollm2.size > 500_000_000 and smollm2.digest  # float32 weights on disk
    shown = client.show("smollm2")
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert "thinking" not in shown.capabilities and "<|im_start|>" in (shown.template or "")
    listed_v1 = {m.id: m.model_extra or {} for m in oai.models.list().data}
    assert shown.modelinfo is not None and shown.modelinfo["general.parameter_count"] == 134_515_008
    assert shown.modelinfo["llama.context_length"] == listed_v1["smollm2"]["max_model_len"]
    assert "smollm2:latest" in {m.model for m in client.ps().models}
    version = httpx.get(smollm2_server.url("/api/version"), timeout=30).json()["version"]
    assert len(version.split(".")) == 3 and all(part.isdigit() for part in version.split("."))
    for call, status in [(lambda: client.chat("missing", QUESTION), 404),
                         (lambda: client.chat("smollm2:7b", QUESTION), 404),
                         (lambda: client.chat("smollm2", QUESTION, think=True), 400),
                         (lambda: client.pull("smollm2"), 400), (lambda: client.delete("smollm2"), 400)]:
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == status and raised.value.error


def _embedding_registration(model_dir: Path) -> dict[str, Any]:
    spec = {"model_format": "pytorch", "model_hub": "huggingface", "model_id": None,
            "model_uri": f"file://{model_dir}", "model_revision": None, "quantization": "none"}
    return {"version": 2, "model_name": "emb-ollama", "language": ["en"], "dimensions": 64, "max_tokens": 512,
            "model_specs": [spec], "virtualenv": {"packages": []}, "is_builtin": False}


def test_embed_equals_openai_embeddings(smollm2_server: RunningServer, tiny_embedding_model: Path) -> None:
    """An embedding model launched next to SmolLM2: /api/embed and /api/embeddings give /v1/embeddings' vectors."""
    if smollm2_server.engine != "transformers":
        pytest.skip("the embedding model runs in its own process, the same on every engine: checked once")
    client, oai = clients(smollm2_server)
    register = {"model": json.dumps(_embedding_registration(tiny_embedding_model)), "persist": False}
    assert httpx.post(smollm2_server.url("/v1/model_registrations/embedding"), json=register, timeout=30).is_success
    launched = httpx.post(smollm2_server.url("/v1/models"), timeout=180,
                          json={"model_name": "emb-ollama", "model_type": "embedding", "model_uid": "emb"})
    try:
        assert launched.is_success, launched.text
        texts = ["hello world", "a second, longer text to embed"]
        reference = oai.embeddings.create(model="emb", input=texts, encoding_format="float")
        embedded = client.embed("emb:latest", texts)
        assert len(embedded.embeddings) == len(texts)
        for vector, expected in zip(embedded.embeddings, reference.data):
            assert list(vector) == pytest.approx(expected.embedding, abs=1e-6)
        assert embedded.prompt_eval_count == reference.usage.prompt_tokens
        single = client.embeddings("emb", texts[0]).embedding
        assert list(single) == pytest.approx(reference.data[0].embedding, abs=1e-6)
        assert client.show("emb").capabilities == ["embedding"]
        assert "emb:latest" in {m.model for m in client.list().models}
        with pytest.raises(ollama.ResponseError) as raised:
            client.chat("emb", QUESTION)
        assert raised.value.status_code == 400 and "embedding" in raised.value.error
    finally:
        httpx.delete(smollm2_server.url("/v1/models/emb"), timeout=60)
        httpx.delete(smollm2_server.url("/v1/model_registrations/embedding/emb-ollama"), timeout=30)


def test_tiny_model_on_every_engine(berth_server: RunningServer) -> None:
    """The tiny model on each engine (llama.cpp from its GGUF): greedy chat equals /v1's, counts equal usage."""
    client, oai = clients(berth_server)
    messages = [{"role": "user", "content": "hello there"}]
    reference = openai_answer(oai, "tiny", messages)
    chunks = list(client.chat("tiny", messages, stream=True, options=GREEDY))
    assert "".join(c.message.content or "" for c in chunks) == reference.choices[0].message.content
    assert_counts_equal_usage(chunks[-1], reference)
    details = {m.model: m.details for m in client.list().models}["tiny:latest"]
    expected_format = "gguf" if berth_server.engine == "llama.cpp" else "safetensors"
    assert details is not None and details.format == expected_format
    assert (details.family, details.parameter_size) == ("llama", "344.38K")  # from the weights' own headers
