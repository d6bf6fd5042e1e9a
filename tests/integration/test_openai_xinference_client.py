"""xinference-client's chat handle on Berth's /v1/chat/completions (generate_config merged at top level)."""

from __future__ import annotations

from xinference_client import RESTfulClient


def test_xinference_client_chat(berth_server) -> None:  # type: ignore[no-untyped-def]
    client = RESTfulClient(berth_server.base_url)
    model = client.get_model(berth_server.model_uid)
    messages = [{"role": "user", "content": "Tell me about boats."}]
    config = {"max_tokens": 6, "temperature": 0.0, "seed": 1}
    whole = model.chat(messages=messages, generate_config=config)
    assert whole["usage"]["completion_tokens"] > 0
    chunks = list(model.chat(messages=messages, generate_config={**config, "stream": True}))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == whole["choices"][0]["message"]["content"]
