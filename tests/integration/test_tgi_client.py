"""TGI routes against the real server with TGI's own client (text-generation 0.7.0), plus /info and /tokenize."""

from __future__ import annotations

import httpx
import pytest
from text_generation import Client
from text_generation.errors import ValidationError

TIMEOUT_S = 60


@pytest.fixture
def tgi(berth_server) -> Client:  # type: ignore[no-untyped-def]
    return Client(berth_server.base_url, timeout=TIMEOUT_S)


def test_generate_with_details_top_tokens_and_prefill(tgi: Client, berth_server) -> None:  # type: ignore[no-untyped-def]
    prefill = berth_server.engine != "llama.cpp"
    if not prefill:  # llama.cpp gives no prompt logprobs: a clear 422 instead
        with pytest.raises(ValidationError, match="llama.cpp"):
            tgi.generate("Hello there", max_new_tokens=5, decoder_input_details=True)
    reply = tgi.generate("Hello there", max_new_tokens=5, decoder_input_details=prefill, top_n_tokens=2)
    details = reply.details
    assert 1 <= details.generated_tokens <= 5
    assert len(details.tokens) == details.generated_tokens
    assert details.finish_reason.value in ("length", "eos_token")
    assert details.seed is None  # greedy
    assert details.prefill or not prefill, "decoder_input_details asks for the prompt tokens"
    assert details.top_tokens is not None and len(details.top_tokens) == details.generated_tokens
    # llama.cpp reports no logprobs for a token it merged into the next one (it ended inside a UTF-8
    # character; the random tiny model makes many): those positions have no top tokens there.
    sizes = {2} if prefill else {0, 2}
    assert all(len(position) in sizes for position in details.top_tokens) and any(details.top_tokens)
    assert all(token.logprob is not None for token in details.tokens) or not prefill
    again = tgi.generate("Hello there", max_new_tokens=5)
    assert again.generated_text == reply.generated_text  # greedy is deterministic


def test_seeded_sampling_is_reproducible(tgi: Client) -> None:
    first = tgi.generate("Once", max_new_tokens=6, do_sample=True, seed=42, temperature=0.9)
    second = tgi.generate("Once", max_new_tokens=6, do_sample=True, seed=42, temperature=0.9)
    assert first.generated_text == second.generated_text
    assert first.details.seed == 42


def test_stop_sequence_ends_generation(tgi: Client) -> None:
    reference = tgi.generate("The cat", max_new_tokens=12)
    words = [t.text for t in reference.details.tokens[1:] if t.text.strip() and not t.special]
    if not words:
        pytest.skip("the tiny model produced no stoppable text")
    stop = words[0]
    stopped = tgi.generate("The cat", max_new_tokens=12, stop_sequences=[stop])
    assert stopped.details.finish_reason.value == "stop_sequence"
    assert stopped.generated_text.endswith(stop)
    assert len(stopped.generated_text) < len(reference.generated_text)


def test_generate_stream_last_event_carries_text_and_details(tgi: Client, berth_server) -> None:  # type: ignore[no-untyped-def]
    events = list(tgi.generate_stream("Hello there", max_new_tokens=4, top_n_tokens=1))
    sizes = {0, 1} if berth_server.engine == "llama.cpp" else {1}  # see the test above
    assert events and all(e.details is None for e in events[:-1])
    last = events[-1]
    assert last.details is not None and 1 <= last.details.generated_tokens <= 4
    assert [e.token for e in events if not e.token.special], "token events carry the generated tokens"
    assert all(e.top_tokens is not None and len(e.top_tokens) in sizes for e in events)
    full = tgi.generate("Hello there", max_new_tokens=4)
    assert full.generated_text == last.generated_text


def test_invalid_parameters_raise_the_clients_validation_error(berth_server) -> None:  # type: ignore[no-untyped-def]
    client = Client(berth_server.base_url, timeout=TIMEOUT_S)
    with pytest.raises(ValidationError):
        client.generate("Hello", max_new_tokens=2, watermark=True)
    reply = httpx.post(berth_server.url("/generate"), json={"inputs": "x", "parameters": {"top_p": 1.5}})
    assert reply.status_code == 422 and reply.json()["error_type"] == "validation"


def test_generate_and_generate_stream_routes(berth_server) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "details": True}}
    single = httpx.post(berth_server.url("/generate"), json=body, timeout=TIMEOUT_S).json()
    assert isinstance(single, dict) and single["details"]["generated_tokens"] >= 1
    with httpx.stream("POST", berth_server.url("/generate_stream"), json=body, timeout=TIMEOUT_S) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith("data:")]
    assert lines and "[DONE]" not in lines[-1]


def test_info_and_tokenize(berth_server) -> None:  # type: ignore[no-untyped-def]
    info = httpx.get(berth_server.url("/info"), timeout=TIMEOUT_S).json()
    assert info["model_pipeline_tag"] == "text-generation" and info["max_best_of"] == 1
    assert info["max_total_tokens"] >= info["max_input_tokens"] > 0
    assert httpx.get(berth_server.url("/health"), timeout=TIMEOUT_S).status_code == 200
    tokens = httpx.post(berth_server.url("/tokenize"), json={"inputs": "Hello world"}, timeout=TIMEOUT_S).json()
    assert tokens and all({"id", "text", "start", "stop"} <= set(t) for t in tokens)
    assert all(0 <= t["start"] <= t["stop"] <= len("Hello world") for t in tokens)
