"""TGI's own client (text-generation 0.7.0) on Berth's /v1/chat/completions, streaming and not."""

from __future__ import annotations

from text_generation import Client
from text_generation.types import Message


def test_tgi_client_chat_and_chat_stream(berth_server) -> None:  # type: ignore[no-untyped-def]
    client = Client(berth_server.base_url, timeout=60)
    messages = [Message(role="user", content="Tell me about boats.")]
    whole = client.chat(messages=messages, max_tokens=6, temperature=0.0, seed=1)
    assert whole.system_fingerprint and whole.choices[0].message.role == "assistant"
    assert whole.usage["completion_tokens"] > 0
    chunks = list(client.chat(messages=messages, max_tokens=6, temperature=0.0, seed=1, stream=True))
    assert chunks and all(c.system_fingerprint for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
