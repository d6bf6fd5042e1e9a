"""The Ollama API on a fake gateway: schema mapping, NDJSON replies, tool calls, errors and model listing.

The official `ollama` client talks to the Flask app in-process (httpx's WSGI transport): no processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from berth_server.adapter_specs import AdapterSource
from berth_server.errors import GenerationFailed
from berth_server.http.app import create_app
from berth_server.protocols.ollama.schemas import ChatRequest, GenerateRequestWire, parse
from berth_server.protocols.tool_calls import TOOL_CALL_PARSERS, WholeCallStream
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import WORDS, FakeControl, FakeGateway, FakeModel

CALL_WORDS = ["I will check.", "\n<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
              "\n</tool_call>", "\n<tool_call>\n", '{"name": "get_time", "arguments": {}}\n</tool_call>']
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
HI = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}}


def OllamaGateway(words: list[str] | None = None, parser: str | None = None,
                  reasoning: list[str] | None = None, mid_failure: GenerationFailed | None = None,
                  fill_in_middle: list[str] | None = None) -> FakeGateway:
    """The fake gateway with its model described fully (context 64, optional tool parser and reasoning)."""
    described = {"source": "demo://tiny", "engine": "fake", "max_batch_size": 1, "reasoning": bool(reasoning),
                 "tool_call_parser": parser, "architecture": "llama", "parameter_count": 344_000,
                 "size_bytes": 1_400_000, "weights_format": "safetensors", "chat_template": "{{ messages }}",
                 "fill_in_middle": fill_in_middle}
    return FakeGateway(words=words, reasoning=reasoning, mid_failure=mid_failure, model=FakeModel(described=described))


def app_client(tmp_path: Path, gateway: FakeGateway) -> FlaskClient:
    """A Flask test client on `gateway`."""
    return create_app(Settings(runtime_dir=tmp_path), gateway=gateway, control=FakeControl()).test_client()


def ollama_client(tmp_path: Path, gateway: FakeGateway) -> ollama.Client:
    """The official client, reaching the app in-process."""
    app = create_app(Settings(runtime_dir=tmp_path), gateway=gateway, control=FakeControl())
    return ollama.Client(host="http://berth.test", transport=httpx.WSGITransport(app=app))


def ndjson(body: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON body."""
    return [json.loads(line) for line in body.splitlines() if line.strip()]


# -- schemas --------------------------------------------------------------------------------
def test_options_map_to_sampling_and_format_to_a_constraint() -> None:
    body = parse(ChatRequest, {
        "model": "default", "messages": HI, "format": SCHEMA,
        "options": {"temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1, "seed": 3, "num_predict": 9,
                    "stop": ["END"], "repeat_penalty": 1.1, "presence_penalty": 0.2, "frequency_penalty": 0.3,
                    "num_ctx": 32, "num_gpu": 99, "num_thread": 2},
        "think": False, "keep_alive": "5m", "logprobs": True, "top_logprobs": 2})
    request = body.to_generate_request("default", "rid", "ad")
    sampling = request.sampling
    assert sampling.greedy and sampling.max_new_tokens == 9 and sampling.top_p == 0.5 and sampling.top_k == 7
    assert (sampling.min_p, sampling.seed, sampling.stop) == (0.1, 3, ("END",))
    assert (sampling.repetition_penalty, sampling.presence_penalty, sampling.frequency_penalty) == (1.1, 0.2, 0.3)
    assert sampling.logprobs == 2 and request.token_details and request.adapter == "ad"
    assert sampling.constraint is not None and sampling.constraint.kind == "json_schema"
    assert sampling.constraint.value == json.dumps(SCHEMA)  # properties keep their order: "name" comes first
    assert request.enable_thinking is False and request.split_reasoning and request.messages == HI
    json_mode = parse(ChatRequest, {"model": "m", "format": "json", "options": {"num_predict": -1}})
    sampling = json_mode.to_generate_request("m", "r").sampling
    assert sampling.constraint is not None and sampling.constraint.kind == "json_object"
    assert sampling.max_new_tokens is None and not sampling.greedy and sampling.temperature == 1.0


def test_messages_keep_tool_calls_tool_names_and_thinking() -> None:
    body = parse(ChatRequest, {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "thinking": "look it up",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]})
    messages = body.to_generate_request("m", "r").messages or []
    assert messages[1] == {"role": "assistant", "content": "", "reasoning_content": "look it up",
                           "tool_calls": [{"type": "function",
                                           "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert messages[2] == {"role": "tool", "content": "sunny", "name": "get_weather"}


def test_generate_templates_the_prompt_unless_raw() -> None:
    templated = parse(GenerateRequestWire, {"model": "m", "prompt": "p", "system": "s"}).to_generate_request("m", "r")
    assert templated.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]
    assert templated.prompt is None and templated.split_reasoning
    raw = parse(GenerateRequestWire, {"model": "m", "prompt": "<|im_start|>p", "raw": True, "template": "{{ .Prompt }}"})
    request = raw.to_generate_request("m", "r")
    assert request.prompt == "<|im_start|>p" and request.messages is None and not request.split_reasoning


@pytest.mark.parametrize("path, body, needle", [
    ("/api/chat", {"options": {"mirostat": 2}}, "mirostat"),
    ("/api/chat", {"options": {"tfs_z": 0.5}}, "tfs_z"),
    ("/api/chat", {"options": {"num_predict": 0}}, "num_predict"),
    ("/api/chat", {"options": {"temperature": 3}}, "temperature"),
    ("/api/chat", {"options": {"repeat_penalty": 1.2, "repeat_last_n": 64}}, "repeat_last_n"),
    ("/api/chat", {"options": {"num_ctx": 65}}, "num_ctx"),
    ("/api/chat", {"think": "high"}, "think"),
    ("/api/chat", {"think": True}, "thinking"),
    ("/api/chat", {"format": "yaml"}, "format"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
    ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/api/chat", {"tools": [{"type": "function", "function": {}}]}, "tool must be"),
    ("/api/generate", {"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ("/api/generate", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"prompt": "x", "context": [1, 2]}, "context"),
    ("/api/generate", {"prompt": "x", "images": ["aGk="]}, "images"),
    ("/api/embed", {"input": "x", "truncate": False}, "truncate"),
])
def test_bad_requests_are_400_in_ollamas_shape(tmp_path: Path, path: str, body: dict[str, Any], needle: str) -> None:
    gateway = OllamaGateway()
    reply = app_client(tmp_path, gateway).post(path, json={"model": "default", "messages": HI, **body})
    assert reply.status_code == 400, reply.get_data(as_text=True)
    assert needle in reply.get_json()["error"] and not gateway.requests  # refused before anything started


def test_a_suffix_is_the_models_fill_in_the_middle_prompt(tmp_path: Path) -> None:
    gateway = OllamaGateway(fill_in_middle=["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    reply = ollama_client(tmp_path, gateway).generate(model="default", prompt="def add(a, b):\n    ",
                                                      suffix="\n    return c", system="ignored", stream=False)
    (request,) = gateway.requests
    assert request.prompt == "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n    return c<|fim_middle|>"
    assert request.messages is None and not request.split_reasoning  # as is: no template, no system
    assert reply.response == "".join(WORDS)


def test_fim_markers_come_from_the_vocabulary() -> None:
    from berth_server.model_process.fill_in_middle import fim_markers

    class Vocabulary:
        def __init__(self, *tokens: str) -> None:
            self.tokens = {token: i for i, token in enumerate(tokens)}

        def get_vocab(self) -> dict[str, int]:
            return self.tokens

    assert fim_markers(Vocabulary("a", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")) == [
        "<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
    assert fim_markers(Vocabulary("<|fim_prefix|>", "<|fim_suffix|>")) is None  # all three, or none


@pytest.mark.parametrize("name", ["nope", "default:7b", "nope:latest"])
def test_unknown_models_are_404_in_ollamas_shape(tmp_path: Path, name: str) -> None:
    client = ollama_client(tmp_path, OllamaGateway())
    for call in (lambda: client.chat(name, HI, stream=False), lambda: client.show(name),
                 lambda: client.embed(name, "x")):
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 404 and name in raised.value.error


def test_management_routes_are_refused_saying_how_models_are_added(tmp_path: Path) -> None:
    client = ollama_client(tmp_path, OllamaGateway())
    for call, needle in [(lambda: client.pull("smollm2"), "POST /v1/models"),
                         (lambda: client.push("smollm2"), "push"),
                         (lambda: client.create("x", from_="smollm2"), "POST /v1/model_registrations"),
                         (lambda: client.copy("default", "other"), "model_uid"),
                         (lambda: client.delete("default"), "DELETE /v1/models")]:
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 400 and needle in raised.value.error


# -- replies --------------------------------------------------------------------------------
def test_chat_streams_ndjson_and_the_whole_reply_is_its_fold(tmp_path: Path) -> None:
    client = app_client(tmp_path, OllamaGateway())
    streamed = client.post("/api/chat", json={"model": "default:latest", "messages": HI})
    assert streamed.status_code == 200 and streamed.mimetype == "application/x-ndjson"
    chunks = ndjson(streamed.get_data(as_text=True))
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c["message"]["content"] for c in chunks) == "".join(WORDS)
    last = chunks[-1]
    assert last["model"] == "default:latest" and last["done_reason"] == "length"
    assert (last["prompt_eval_count"], last["eval_count"], last["load_duration"]) == (5, len(WORDS), 0)
    assert last["total_duration"] >= last["prompt_eval_duration"] + last["eval_duration"] > 0
    whole = client.post("/api/chat", json={"model": "default:latest", "messages": HI, "stream": False})
    assert whole.mimetype == "application/json"
    body = whole.get_json()
    assert body["message"] == {"role": "assistant", "content": "".join(WORDS)} and body["done"] is True
    assert {k: body[k] for k in ("done_reason", "prompt_eval_count", "eval_count")} == {
        k: last[k] for k in ("done_reason", "prompt_eval_count", "eval_count")}


def test_the_official_client_reads_chat_and_generate(tmp_path: Path) -> None:
    gateway = OllamaGateway(reasoning=["Let me think."])
    client = ollama_client(tmp_path, gateway)
    reply = client.chat("default", HI, think=True, options={"temperature": 0})
    assert reply.message.content == "".join(WORDS) and reply.message.thinking == "Let me think."
    assert reply.done and reply.eval_count == len(WORDS) + 1 and gateway.requests[-1].enable_thinking is True
    parts = list(client.generate("default", "hi", stream=True, logprobs=True, top_logprobs=1))
    assert "".join(p.response or "" for p in parts) == "".join(WORDS) and parts[-1].done
    assert "".join(p.thinking or "" for p in parts) == "Let me think."
    assert [lp.token for p in parts for lp in p.logprobs or []] == WORDS
    assert parts[-1].prompt_eval_count == 5 and parts[-1].done_reason == "length"


def test_nothing_to_generate_answers_loaded(tmp_path: Path) -> None:
    gateway = OllamaGateway()
    client = app_client(tmp_path, gateway)
    for path in ("/api/chat", "/api/generate"):
        (chunk,) = ndjson(client.post(path, json={"model": "default"}).get_data(as_text=True))
        assert chunk["done"] is True and chunk["done_reason"] == "load"
    assert not gateway.requests


def test_tool_calls_come_whole_with_argument_objects(tmp_path: Path) -> None:
    client = ollama_client(tmp_path, OllamaGateway(CALL_WORDS, parser="hermes"))
    reply = client.chat("default", [{"role": "user", "content": "weather?"}], tools=TOOLS)
    assert reply.message.content == "I will check."
    calls = [(c.function.name, c.function.arguments) for c in reply.message.tool_calls or []]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    chunks = list(client.chat("default", [{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True))
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert [[t.function.name for t in c.message.tool_calls or []] for c in with_calls] == [["get_weather"],
                                                                                           ["get_time"]]


def test_without_a_parser_json_calls_are_read_as_ollama_reads_them(tmp_path: Path) -> None:
    words = ['{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}']
    reply = ollama_client(tmp_path, OllamaGateway(words)).chat("default", HI, tools=TOOLS)
    assert reply.message.content == "" and reply.message.tool_calls
    assert reply.message.tool_calls[0].function.arguments == {"city": "Oslo"}
    plain = ollama_client(tmp_path, OllamaGateway(words)).chat("default", HI)  # no tools offered: text
    assert plain.message.content == "".join(words) and not plain.message.tool_calls


def test_whole_call_stream_drops_unusable_calls() -> None:
    calls = WholeCallStream(TOOL_CALL_PARSERS["hermes"])
    content, done = calls.step('<tool_call>{"name": "f", "arguments": [1]}</tool_call><tool_call>{"name": "g", ',
                               last=False)
    assert content == "" and done == []  # an array is not an argument object
    assert calls.step('"arguments": {"x": 1}}</tool_call>', last=True)[1] == [
        {"index": 0, "name": "g", "arguments": {"x": 1}}]


def test_an_error_mid_stream_is_the_last_line(tmp_path: Path) -> None:
    gateway = OllamaGateway(mid_failure=GenerationFailed("engine fell over"))
    chunks = ndjson(app_client(tmp_path, gateway).post("/api/chat", json={"model": "default", "messages": HI})
                    .get_data(as_text=True))
    assert chunks[-1] == {"error": "engine fell over"} and gateway.streams[-1].closed
    with pytest.raises(ollama.ResponseError, match="engine fell over"):
        list(ollama_client(tmp_path, gateway).chat("default", HI, stream=True))


# -- models ---------------------------------------------------------------------------------
def test_list_show_ps_and_version_validate_as_the_client_reads_them(tmp_path: Path) -> None:
    gateway = OllamaGateway(parser="hermes", reasoning=["r"])
    client = ollama_client(tmp_path, gateway)
    (listed,) = client.list().models
    assert listed.model == "default:latest" and listed.size == 1_400_000 and listed.digest
    assert listed.details is not None and listed.details.family == "llama"
    assert (listed.details.format, listed.details.parameter_size, listed.details.quantization_level) == (
        "safetensors", "344K", "F32")
    shown = client.show("default:latest")
    assert shown.capabilities == ["completion", "tools", "thinking"] and shown.template == "{{ messages }}"
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 64
    assert shown.modelinfo["general.parameter_count"] == 344_000
    (running,) = client.ps().models
    assert running.model == "default:latest" and running.context_length == 64 and running.size_vram == 0
    version = app_client(tmp_path, gateway).get("/api/version").get_json()["version"]
    assert [int(part) for part in version.split(".")] >= [0, 6, 4]  # Copilot's minimum
    probe = app_client(tmp_path, gateway).get("/")  # tools check Ollama's root before /api/*
    assert probe.status_code == 200 and probe.get_data(as_text=True) == "Ollama is running"
    assert app_client(tmp_path, gateway).head("/").status_code == 200


MY_LLM = {"model_name": "my-llm", "is_builtin": False, "model_specs": [
    {"model_format": "ggufv2", "model_size_in_billions": "1_5", "quantization": "Q4_K_M",
     "model_uri": "file:///models/my.gguf"}]}


class RegistrationsControl(FakeControl):
    """A launcher holding one custom LLM registration (MY_LLM), not running."""

    def call(self, method: str, **params: Any) -> Any:
        """Registrations of LLMs; nothing else."""
        super().call(method, **params)
        if params.get("model_type") != "LLM":
            return [] if method == "registrations.list" else None
        if method == "registrations.list":
            return [MY_LLM, {"model_name": "builtin", "is_builtin": True}]
        if method == "registrations.get" and params.get("name") == "my-llm":
            return MY_LLM
        return None


def test_registrations_are_listed_and_named_in_the_404(tmp_path: Path) -> None:
    app = create_app(Settings(runtime_dir=tmp_path), gateway=OllamaGateway(), control=RegistrationsControl())
    client = ollama.Client(host="http://berth.test", transport=httpx.WSGITransport(app=app))
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"default:latest", "my-llm:latest"}  # built-in families are not listed
    details = models["my-llm:latest"].details
    assert details is not None and (details.format, details.parameter_size, details.quantization_level) == (
        "ggufv2", "1.5B", "Q4_K_M")
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat("my-llm:latest", HI)
    assert raised.value.status_code == 404 and "not running" in raised.value.error
    assert "POST /v1/models" in raised.value.error


def test_an_adapter_name_selects_the_adapter(tmp_path: Path) -> None:
    gateway = OllamaGateway()
    gateway.add_adapter("default", AdapterSource(name="sql", src="/adapters/sql"))
    client = ollama_client(tmp_path, gateway)
    assert client.generate("sql:latest", "hi", stream=False).response == "".join(WORDS)
    assert gateway.requests[-1].model == "default" and gateway.requests[-1].adapter == "sql"
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed("sql", "x")
    assert raised.value.status_code == 400 and "adapter" in raised.value.error


def test_tokens_that_arrive_together_still_took_time(tmp_path: Path) -> None:
    """One delta carries every token: eval_duration is 1 ns, not 0 (clients divide by it)."""
    reply = ollama_client(tmp_path, OllamaGateway(["all at once"])).chat("default", HI, stream=False)
    assert reply.eval_count == 1 and reply.eval_duration == 1
    assert reply.total_duration == reply.prompt_eval_duration + 1
