"""SmolLM2-135M-Instruct Q4_1 served from its .gguf file on the llama.cpp engine, through the real openai client.

One server for the module (HF_MODEL_ID=<file>.gguf, BERTH_ENGINE=auto must pick llama.cpp). The
references are the model's own outputs sent alone, llama.cpp's own server on the same file (started
once, only for the test that asks for it), and token counts from the GGUF's tokenizer.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import RunningServer, free_port, launch_serve
from tests.llamacpp_oracle import LlamaCppServer, start_llamacpp_server

pytestmark = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed")
UID = "smollm2-gguf"
# SmolLM2's template adds its own system prompt when there is none; with it, llama.cpp's Q4_1 kernels
# make the greedy answer "L'Étoile...", so the question comes with a plain system prompt.
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PROMPTS = [
    "What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Say hello in Spanish.",
    "What is the largest planet?", "Who wrote Hamlet?", "What do bees make?", "Name a fruit that is yellow.",
]


# 16 slots of 1024 tokens want more KV cache than 0.25 GiB: the sizing path where the slots once shared
# one cache, which made answers depend on the requests beside them.
ENV = {"BERTH_MODEL_UID": UID, "MAX_TOTAL_TOKENS": "1024", "MAX_CONCURRENT_REQUESTS": "16", "BERTH_KV_CACHE_GB": "0.25"}


@pytest.fixture(scope="module")
def gguf_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """serve with HF_MODEL_ID set to the .gguf file; auto picks llama.cpp."""
    server = launch_serve(smollm2_gguf, tmp_path_factory.mktemp("gguf"), engine="auto", env=ENV)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llamacpp_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """llama.cpp's own server on the same file with the slots, context and threads Berth sizes from ENV."""
    from berth_server.engines import llamacpp_params
    from berth_server.launch_config import ModelLaunchConfig
    from berth_server.settings import Settings

    config = ModelLaunchConfig(uid=UID, source=str(smollm2_gguf), model_name=UID, is_default=True)
    options = llamacpp_params.server_options(smollm2_gguf, llamacpp_params.read_gguf_facts(smollm2_gguf), config,
                                             Settings.from_env(ENV), os.cpu_count() or 1)
    assert options.n_parallel < int(ENV["MAX_CONCURRENT_REQUESTS"])  # the budget bound the slots
    server = start_llamacpp_server(smollm2_gguf, free_port(), options.n_parallel, options.slot_context,
                                   options.threads, tmp_path_factory.mktemp("llama-server") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gguf_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gguf_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


def _chat(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=UID, messages=[SYSTEM, {"role": "user", "content": question}],
                                          temperature=0, max_tokens=kwargs.pop("max_tokens", 12), **kwargs)


def test_auto_picks_llamacpp_and_answers_paris(client: openai.OpenAI, gguf_server: RunningServer) -> None:
    info = httpx.get(gguf_server.url("/info"), timeout=10).json()
    assert "engine llama.cpp (auto" in gguf_server.logs()
    assert info["max_total_tokens"] == 1024
    reply = _chat(client, "What is the capital of France?")
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    whole = _chat(client, "Tell me about the sea.", max_tokens=24)
    chunks = list(_chat(client, "Tell me about the sea.", max_tokens=24, stream=True,
                        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_concurrent_prompts_match_alone(client: openai.OpenAI) -> None:
    alone = [_chat(client, q).choices[0].message.content for q in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda q: _chat(client, q).choices[0].message.content, PROMPTS))
    assert together == alone


def test_answers_sent_together_equal_llamacpps_own_server_alone(client: openai.OpenAI,
                                                                 llamacpp_server: LlamaCppServer) -> None:
    """Greedy chats sent all at once must not depend on each other: llama.cpp's own server answering them
    one at a time is the reference (when the slots shared one KV cache, half of the answers differed)."""
    with openai.OpenAI(base_url=llamacpp_server.base_url + "/v1", api_key="unused", max_retries=0,
                       timeout=300) as own:
        alone = [_greedy_answer(own, "gguf", q) for q in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda q: _greedy_answer(client, UID, q), PROMPTS))
    assert together == alone


def _greedy_answer(client: openai.OpenAI, model: str, question: str) -> tuple[str | None, str | None]:
    """30 greedy tokens for one user message (no system prompt): the text and why it ended.

    Not the token count: when the 30th token ends inside an emoji, llama.cpp never reports the
    tokens of that unfinished character, so Berth counts them short (README's known gap).
    """
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=30)
    return reply.choices[0].message.content, reply.choices[0].finish_reason


def test_usage_counts_are_exact(client: openai.OpenAI, tokenizer: Any) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Write a long poem about the sea."}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    reply = client.chat.completions.create(model=UID, messages=messages, temperature=0, max_tokens=9, logprobs=True)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens == len(prompt_ids)
    assert reply.choices[0].finish_reason == "length" and usage.completion_tokens == 9
    assert reply.choices[0].logprobs is not None and len(reply.choices[0].logprobs.content or []) == 9
    completion = client.completions.create(model=UID, prompt="The sea is", max_tokens=5, temperature=0)
    assert completion.usage is not None and completion.usage.prompt_tokens == len(tokenizer.encode("The sea is"))
    assert completion.usage.completion_tokens == 5


def test_multibyte_tokens_keep_their_ids(client: openai.OpenAI, tokenizer: Any) -> None:
    """llama.cpp streams a token that ends inside a UTF-8 character merged with the next one; none go missing."""
    prompt = "Emoji party: 🎉🎉🎉🎉 🎉🎉"
    reply = client.completions.create(model=UID, prompt=prompt, max_tokens=6, temperature=0)
    text = reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert len(tokenizer.encode(text, add_special_tokens=False)) == 6 and "\ufffd" not in text


def test_top_logprobs_and_sampling_knobs(client: openai.OpenAI) -> None:
    reply = _chat(client, "Name a colour.", max_tokens=4, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    seeded = [client.chat.completions.create(model=UID, messages=[{"role": "user", "content": "Tell a story."}],
                                             temperature=1.0, top_p=0.9, seed=11, max_tokens=12)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_prompt_logprobs_are_a_clear_4xx(gguf_server: RunningServer) -> None:
    reply = httpx.post(gguf_server.url("/generate"), timeout=60, json={
        "inputs": "Hello", "parameters": {"max_new_tokens": 2, "decoder_input_details": True}})
    assert reply.status_code == 422 and "llama.cpp" in reply.json()["error"]


def _ggufv2(name: str, model_uri: str, **spec: Any) -> dict[str, Any]:
    """A custom LLM registration with one ggufv2 spec, as Xinference writes them."""
    return {
        "version": 2, "model_name": name, "model_lang": ["en"], "model_ability": ["chat", "generate"],
        "model_family": f"{name}-family", "chat_template": None, "stop_token_ids": None, "stop": None,
        "model_specs": [{"model_format": "ggufv2", "model_size_in_billions": "0_135", "model_hub": "huggingface",
                         "model_id": None, "model_uri": model_uri, "model_revision": None, **spec}],
        "virtualenv": {"packages": []}, "is_builtin": False,
    }


def test_ggufv2_registration_through_xinference_client(gguf_server: RunningServer, smollm2_gguf: Path,
                                                       tmp_path: Path) -> None:
    import json

    from xinference_client import RESTfulClient

    folder = tmp_path / "quantizations"
    folder.mkdir()
    (folder / smollm2_gguf.name).symlink_to(smollm2_gguf)
    client = RESTfulClient(gguf_server.base_url)
    registration = _ggufv2("smol-gguf", str(folder), quantizations=["Q4_1", "Q8_0"],
                           model_file_name_template="SmolLM2-135M-Instruct.{quantization}.gguf")
    client.register_model("LLM", json.dumps(registration), persist=False)
    with pytest.raises(RuntimeError, match="Q4_1|Q8_0"):
        client.launch_model("smol-gguf", model_engine="llama.cpp", model_format="ggufv2", quantization="Q5_K_M")
    with pytest.raises(RuntimeError, match="SmolLM2-135M-Instruct.Q8_0.gguf"):
        client.launch_model("smol-gguf", model_engine="llama.cpp", model_format="ggufv2", quantization="Q8_0")
    uid = client.launch_model("smol-gguf", model_engine="llama.cpp", model_format="ggufv2", quantization="Q4_1",
                              model_uid="smol-q4")
    try:
        model = client.get_model(uid)
        reply = model.chat(messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
                           generate_config={"max_tokens": 16, "temperature": 0})
        assert "Paris" in reply["choices"][0]["message"]["content"]
        described = httpx.get(gguf_server.url(f"/v1/models/{uid}"), timeout=10).json()
        assert described.get("model_engine") == "llama.cpp"
    finally:
        client.terminate_model(uid)


def test_truncated_gguf_fails_the_launch_with_a_4xx(gguf_server: RunningServer, smollm2_gguf: Path,
                                                     tmp_path: Path) -> None:
    cut = tmp_path / "cut.Q4_1.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[: 8 << 20])
    body = {"model": __import__("json").dumps(_ggufv2("cut-gguf", str(cut), quantization="Q4_1")), "persist": False}
    assert httpx.post(gguf_server.url("/v1/model_registrations/LLM"), json=body, timeout=30).status_code == 200
    reply = httpx.post(gguf_server.url("/v1/models"), json={"model_name": "cut-gguf", "model_uid": "cut"},
                       timeout=120)
    assert 400 <= reply.status_code < 500 and "cut.Q4_1.gguf" in reply.json()["detail"]
    assert httpx.get(gguf_server.url("/ping"), timeout=10).status_code == 200  # the launcher is fine
