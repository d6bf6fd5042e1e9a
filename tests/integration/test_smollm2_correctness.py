"""Real weights (SmolLM2-135M-Instruct, float32): Berth's greedy answers equal transformers' generate.

Eight different chats are sent at once, so continuous batching runs them together; each answer must
equal transformers' generate run on that chat alone. Checked non-streaming and streaming on the
OpenAI route, through TGI's own client, and through /invocations (chat and TGI bodies), on each
engine, served as `make run` serves it (vLLM keeps the float32 checkpoint in float32 on a CPU: in
bfloat16 it gives other tokens and loops on the README's first question). Usage counts must
equal the chat template's token count and the generated token count.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from text_generation import Client

from .conftest import RunningServer

# Model loads and reference generation on a shared 2-core machine outlast the default 300 s.
pytestmark = pytest.mark.timeout(1200)
MAX_NEW = 24
# The README promises answers "in seconds". Generous: CI machines are shared; speed itself is measured under
# bench/, not here. Its /invocations call samples, so it carries max_tokens: without one, a sampled SmolLM2 reply
# may run on to the context limit (8192 tokens, minutes here; it once outlasted this timeout in `make test`).
README_TIMEOUT_S = 300.0
QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "At what temperature does water boil, in Celsius?",
    "Give me a synonym for happy.",
)


@dataclass(frozen=True)
class Expected:
    """transformers' greedy answer to one question: prompt ids, generated ids (stop token included), text."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    stopped: bool  # ended on a stop token (finish_reason "stop"), not at MAX_NEW


@pytest.fixture(scope="module")
def expected(smollm2_model: Path) -> list[Expected]:
    """Greedy generate, one chat at a time, float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model)
    model = AutoModelForCausalLM.from_pretrained(smollm2_model, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    # The model's EOS plus the catalog's smollm2-instruct stops (<|im_end|>, <|endoftext|>).
    stops = sorted({*(eos if isinstance(eos, list) else [eos]),
                    *tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])})
    answers = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stops)
        generated = out[0, len(ids):].tolist()
        stopped = bool(generated) and generated[-1] in stops
        text = tokenizer.decode(generated[:-1] if stopped else generated, skip_special_tokens=True)
        answers.append(Expected(ids, generated, text, stopped))
    assert "Paris" in answers[0].text  # real weights give real answers
    return answers


def _readme_requests() -> list[tuple[str, dict[str, Any]]]:
    """The (path, body) of each curl under the README's "Talk to it", exactly as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Talk to it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    calls = re.findall(r"curl localhost:8080(\S+) .*?-d '([^']*)'", section, flags=re.DOTALL)
    assert calls, "the README's first requests moved: keep this test pointed at them"
    return [(path, json.loads(body)) for path, body in calls]


def test_readme_requests_answer_in_seconds(smollm2_server: RunningServer, expected: list[Expected]) -> None:
    # A newcomer's first request has no max_tokens: on the engine `make run` picks, it must stop on its own.
    (path, body), *others = _readme_requests()
    assert path == "/v1/chat/completions" and "max_tokens" not in body
    started = time.monotonic()
    reply = httpx.post(smollm2_server.url(path), json=body, timeout=README_TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert expected[0].stopped and choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == expected[0].text  # "The capital of France is Paris."
    for other_path, other_body in others:
        answer = httpx.post(smollm2_server.url(other_path), json=other_body, timeout=README_TIMEOUT_S)
        assert answer.status_code == 200, (other_path, answer.text)
    assert time.monotonic() - started < README_TIMEOUT_S


def _all_at_once(call: Any, count: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i]}]


def test_chat_batched_equals_generate(smollm2_server: RunningServer, expected: list[Expected]) -> None:
    client = openai.OpenAI(base_url=smollm2_server.url("/v1"), api_key="none", max_retries=0, timeout=300)

    def chat(i: int) -> Any:
        return client.chat.completions.create(model="smollm2", messages=_messages(i),  # type: ignore[arg-type]
                                              max_tokens=MAX_NEW, temperature=0)

    replies = _all_at_once(chat, len(QUESTIONS))
    assert [r.choices[0].message.content for r in replies] == [e.text for e in expected]
    for reply, want in zip(replies, expected, strict=True):
        assert reply.usage.prompt_tokens == len(want.prompt_ids)
        assert reply.usage.completion_tokens == len(want.token_ids)
        assert reply.choices[0].finish_reason == ("stop" if want.stopped else "length")


def test_streamed_chat_batched_equals_generate(smollm2_server: RunningServer, expected: list[Expected]) -> None:
    client = openai.OpenAI(base_url=smollm2_server.url("/v1"), api_key="none", max_retries=0, timeout=300)

    def stream(i: int) -> tuple[str, Any]:
        text, usage = "", None
        for chunk in client.chat.completions.create(model="smollm2", messages=_messages(i),  # type: ignore[arg-type]
                                                    max_tokens=MAX_NEW, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        return text, usage

    results = _all_at_once(stream, len(QUESTIONS))
    assert [text for text, _ in results] == [e.text for e in expected]
    assert [(u.prompt_tokens, u.completion_tokens) for _, u in results] == [
        (len(e.prompt_ids), len(e.token_ids)) for e in expected]


def test_tgi_client_and_invocations_equal_generate(smollm2_server: RunningServer,
                                                   expected: list[Expected]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_server.home / "demo-models" / "smollm2")
    prompts = [tokenizer.apply_chat_template(_messages(i), add_generation_prompt=True, tokenize=False)
               for i in range(len(QUESTIONS))]
    tgi = Client(smollm2_server.base_url, timeout=300)
    replies = _all_at_once(lambda i: tgi.generate(prompts[i], max_new_tokens=MAX_NEW, decoder_input_details=True),
                           len(QUESTIONS))
    for reply, want in zip(replies, expected, strict=True):
        assert [t.id for t in reply.details.prefill] == want.prompt_ids
        assert [t.id for t in reply.details.tokens] == want.token_ids
        assert reply.details.generated_tokens == len(want.token_ids)
    streamed = [t.token.id for t in tgi.generate_stream(prompts[1], max_new_tokens=MAX_NEW)]
    assert streamed == expected[1].token_ids

    def invoke(i: int) -> Any:
        body: dict[str, Any] = ({"messages": _messages(i), "max_tokens": MAX_NEW, "temperature": 0} if i % 2 else
                                {"inputs": prompts[i], "parameters": {"max_new_tokens": MAX_NEW, "details": True}})
        response = httpx.post(smollm2_server.url("/invocations"), json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()

    for i, reply in enumerate(_all_at_once(invoke, len(QUESTIONS))):
        if i % 2:
            assert reply["choices"][0]["message"]["content"] == expected[i].text
            assert reply["usage"]["prompt_tokens"] == len(expected[i].prompt_ids)
        else:
            assert [t["id"] for t in reply[0]["details"]["tokens"]] == expected[i].token_ids
