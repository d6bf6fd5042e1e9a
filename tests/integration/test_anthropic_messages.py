"""The real `anthropic` client against /v1/messages on the real SmolLM2, on each checkpoint engine.

Every answer is checked against the same conversation sent to /v1/chat/completions: greedy text,
usage and stop reason must be equal, whole and streamed (the SDK's own stream accumulator builds the
streamed message). A tool loop runs a forced call, its tool_result, then the final answer.
count_tokens must equal the usage of the message, and bad input is a 4xx in Anthropic's envelope,
streamed or not, raised by the SDK as its typed error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from .conftest import RunningServer
from .test_xinference_client import llm_registration

pytestmark = pytest.mark.timeout(1200)  # the shared SmolLM2 server may be started by this module
SYSTEM = "You are a helpful assistant. Answer briefly."
QUESTION = "What is the capital of France?"
WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                            "required": ["city"]}}
# anthropic 2.x takes no `temperature` argument on messages.create: it goes in the body as is.
GREEDY = {"temperature": 0}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@pytest.fixture(scope="module")
def clients(smollm2_server: RunningServer) -> Iterator[tuple[anthropic.Anthropic, openai.OpenAI]]:
    with anthropic.Anthropic(base_url=smollm2_server.base_url, api_key="unused", max_retries=0, timeout=120) as a, \
            openai.OpenAI(base_url=smollm2_server.url("/v1"), api_key="unused", max_retries=0, timeout=120) as o:
        yield a, o


def _chat(client: openai.OpenAI, messages: list[dict[str, Any]], max_tokens: int, model: str = "smollm2",
          **extra: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                                          temperature=0, **extra)


def _equal_to_chat(message: Any, completion: Any) -> None:
    """The message says what the chat completion says: text, stop reason, usage."""
    choice = completion.choices[0]
    assert "".join(b.text for b in message.content if b.type == "text") == (choice.message.content or "")
    assert message.stop_reason == STOP_REASONS[choice.finish_reason]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        completion.usage.prompt_tokens, completion.usage.completion_tokens)


def _streamed(client: anthropic.Anthropic, **body: Any) -> tuple[Any, list[str]]:
    """The SDK's own accumulation of the stream, and the event types in order."""
    with client.messages.stream(**body) as stream:
        kinds = [event.type for event in stream]
        return stream.get_final_message(), kinds


def _without_ids(message: Any) -> dict[str, Any]:
    data = message.to_dict()
    data["id"] = None
    data["content"] = [{**block, "id": None} if block["type"] == "tool_use" else block for block in data["content"]]
    return data


def test_text_equals_chat_completions(clients: tuple[anthropic.Anthropic, openai.OpenAI]) -> None:
    client, chat = clients
    max_tokens = 32
    body: dict[str, Any] = {"model": "smollm2", "max_tokens": max_tokens, "system": SYSTEM, "extra_body": GREEDY,
                            "messages": [{"role": "user", "content": QUESTION}],
                            "metadata": {"user_id": "someone"}}
    reference = _chat(chat, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], max_tokens)
    whole = client.messages.create(**body)
    _equal_to_chat(whole, reference)
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert [block.type for block in whole.content] == ["text"] and "Paris" in whole.content[0].text
    assert whole.stop_reason == "end_turn"
    streamed, kinds = _streamed(client, **body)
    assert _without_ids(streamed) == _without_ids(whole)  # the SDK's accumulation of the stream
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    counted = client.messages.count_tokens(model="smollm2", system=SYSTEM,
                                           messages=[{"role": "user", "content": QUESTION}])
    assert counted.input_tokens == whole.usage.input_tokens


def test_tool_loop_equals_chat_completions(clients: tuple[anthropic.Anthropic, openai.OpenAI]) -> None:
    """A forced call, its result, then the answer; each turn equals the same chat completion's."""
    client, chat = clients
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"model": "smollm2", "max_tokens": 64, "extra_body": GREEDY, "tools": [WEATHER],
              "tool_choice": {"type": "tool", "name": "get_weather"}}
    call_message = client.messages.create(messages=ask, **forced)
    (call,) = [block for block in call_message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER["input_schema"])
    assert call_message.stop_reason == "tool_use"
    streamed, kinds = _streamed(client, messages=ask, **forced)
    assert _without_ids(streamed) == _without_ids(call_message)
    assert "content_block_start" in kinds
    chat_tools = [{"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                    "parameters": WEATHER["input_schema"]}}]
    reference = _chat(chat, ask, 64, tools=chat_tools,
                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (chat_call,) = reference.choices[0].message.tool_calls
    assert json.loads(chat_call.function.arguments) == call.input
    assert (call_message.usage.input_tokens, call_message.usage.output_tokens) == (
        reference.usage.prompt_tokens, reference.usage.completion_tokens)

    # The client sends the tool_use block back with its result; the model answers in text.
    result = "Sunny, 21 degrees Celsius."
    loop = [*ask, {"role": "assistant", "content": [block.to_dict() for block in call_message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}]
    answer = client.messages.create(model="smollm2", max_tokens=24, extra_body=GREEDY, tools=[WEATHER], messages=loop)
    as_chat = [*ask, {"role": "assistant", "content": "", "tool_calls": [{
        "id": call.id, "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(call.input, ensure_ascii=False)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result}]
    _equal_to_chat(answer, _chat(chat, as_chat, 24, tools=chat_tools))
    assert any(block.type == "text" and block.text for block in answer.content)


def test_bad_input_is_a_4xx_in_anthropics_envelope(clients: tuple[anthropic.Anthropic, openai.OpenAI],
                                                   smollm2_server: RunningServer) -> None:
    client, _ = clients
    user = [{"role": "user", "content": "Hi"}]
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(model="smollm2", max_tokens=0, messages=user, stream=stream)  # type: ignore[call-overload]
        assert refused.value.status_code == 400 and refused.value.body["type"] == "error"  # type: ignore[index]
        assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert "max_tokens" in refused.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="claude-nope", max_tokens=8, messages=user)
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="image blocks"):
        client.messages.create(model="smollm2", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    # max_tokens is required, as Anthropic requires it (the SDK checks it too: send the body by hand).
    missing = httpx.post(smollm2_server.url("/v1/messages"), json={"model": "smollm2", "messages": user}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]


def test_thinking_goes_into_thinking_blocks(clients: tuple[anthropic.Anthropic, openai.OpenAI],
                                            smollm2_server: RunningServer, tiny_reasoning_model: Path) -> None:
    """On a thinking template (launched beside SmolLM2), thinking is a thinking block, never text."""
    if smollm2_server.engine != "transformers":
        pytest.skip("the launched model runs on transformers whatever the server's engine: once is enough")
    client, chat = clients
    registration = llm_registration("an-think", tiny_reasoning_model,
                                    model_ability=["chat", "generate", "reasoning", "hybrid"],
                                    reasoning_start_tag="<think>", reasoning_end_tag="</think>")
    assert httpx.post(smollm2_server.url("/v1/model_registrations/LLM"), json={"model": json.dumps(registration)},
                      timeout=30).status_code == 200
    launched = httpx.post(smollm2_server.url("/v1/models"), json={
        "model_name": "an-think", "model_uid": "an-think", "model_engine": "transformers"}, timeout=180)
    assert launched.status_code == 200, launched.text
    try:
        ask = {"model": "an-think", "max_tokens": 12, "extra_body": GREEDY,
               "messages": [{"role": "user", "content": "why?"}]}
        # A budget (below max_tokens, as Anthropic requires) that leaves no room to answer is not forced.
        thinking = client.messages.create(thinking={"type": "enabled", "budget_tokens": 11}, **ask)
        reference = _chat(chat, ask["messages"], 12, model="an-think",
                          extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        reasoning = reference.choices[0].message.model_extra["reasoning_content"]
        assert reasoning  # the template opened <think>: the reply starts as reasoning
        assert thinking.content[0].type == "thinking" and thinking.content[0].thinking == reasoning
        assert "".join(b.text for b in thinking.content if b.type == "text") == (reference.choices[0].message.content or "")
        streamed, kinds = _streamed(client, thinking={"type": "enabled", "budget_tokens": 11}, **ask)
        assert _without_ids(streamed) == _without_ids(thinking) and "content_block_delta" in kinds
        quiet = client.messages.create(thinking={"type": "disabled"}, **ask)
        assert [block.type for block in quiet.content] == ["text"]
        for message in (thinking, quiet):
            assert "<think>" not in message.to_json() and "</think>" not in message.to_json()
        _check_thinking_budget(client, ask, tiny_reasoning_model)
    finally:
        httpx.delete(smollm2_server.url("/v1/models/an-think"), timeout=60)
        httpx.delete(smollm2_server.url("/v1/model_registrations/LLM/an-think"), timeout=30)


def _check_thinking_budget(client: anthropic.Anthropic, ask: dict[str, Any], model_dir: Path) -> None:
    """budget_tokens is a limit: after that many thinking tokens the block is closed and the model answers
    from its thoughts so far; both equal transformers' greedy generate, run the same way by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    budget, max_tokens = 4, 16
    budgeted = client.messages.create(**{**ask, "max_tokens": max_tokens},
                                      thinking={"type": "enabled", "budget_tokens": budget})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(ask["messages"], add_generation_prompt=True, enable_thinking=True,
                                           return_dict=True)["input_ids"]

    def greedy(ids: list[int], count: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=count, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    thought = greedy(prompt, budget)
    close = tokenizer.encode("</think>\n\n", add_special_tokens=False)
    assert "</think>" not in tokenizer.decode(thought), "the model closed its thinking itself: pick another budget"
    answer = greedy(prompt + thought + close, max_tokens - budget - len(close))
    blocks = {block.type: block for block in budgeted.content}
    assert blocks["thinking"].thinking.strip() == tokenizer.decode(thought, skip_special_tokens=True).strip()
    assert blocks["text"].text.strip() == tokenizer.decode(answer, skip_special_tokens=True).strip()
    assert budgeted.usage.output_tokens == budget + len(close) + len(answer)
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client.messages.create(**{**ask, "max_tokens": 8}, thinking={"type": "enabled", "budget_tokens": 8})

