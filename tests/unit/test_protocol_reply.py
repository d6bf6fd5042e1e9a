"""protocols/reply.py: the one fold that turns a protocol's streamed events into its whole reply."""

from __future__ import annotations

from berth_server.protocols.reply import FoldRules, WireReply, fold_events, streamed

CHAT = FoldRules(concat=frozenset({"content", "arguments"}), by_index=frozenset({"choices", "tool_calls"}))


def test_chat_chunks_fold_into_choices_calls_and_usage() -> None:
    head = {"id": "c1", "object": "chat.completion.chunk"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                              "logprobs": {"content": [{"token": "Hel"}]}}]},
        {**head, "choices": [{"index": 1, "delta": {"role": "assistant", "content": "Bye"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            "logprobs": {"content": [{"token": "lo"}]}}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"a": 1}'}}]}, "logprobs": None, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    folded = fold_events(chunks, CHAT)
    first, second = folded["choices"]
    assert first["delta"] == {"role": "assistant", "content": "Hello", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    assert first["logprobs"] == {"content": [{"token": "Hel"}, {"token": "lo"}]}  # a None never erases
    assert first["finish_reason"] == "tool_calls" and second["delta"]["content"] == "Bye"
    assert folded["usage"] == {"prompt_tokens": 3, "completion_tokens": 4} and folded["id"] == "c1"


def test_groups_fold_one_by_one_and_private_keys_never_stream() -> None:
    events = [[{"index": 1, "_tokens": [1]}, {"index": 2, "_tokens": [2]}], {"index": 3, "_tokens": [],
                                                                             "details": {"seed": None}}]
    folded = fold_events(events, FoldRules())
    assert folded == {"index": 3, "_tokens": [1, 2], "details": {"seed": None}}
    assert streamed({"a": 1, "_b": 2, "c": {"_d": 3, "e": [{"_f": 4, "g": 5}]}}) == {"a": 1, "c": {"e": [{"g": 5}]}}


def test_an_error_while_folding_a_whole_reply_gets_the_protocols_error_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from berth_server.errors import GenerationFailed

    from tests.unit.fakes.gateway import FakeGateway
    from tests.unit.test_openai_protocol import client_for

    client = client_for(tmp_path, FakeGateway(mid_failure=GenerationFailed("the engine lost a token")))
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 500 and reply.json["error"]["message"] == "the engine lost a token"
    tgi = client.post("/generate", json={"inputs": "hi"})
    assert tgi.status_code == 500 and tgi.json["error"] == "the engine lost a token"


def test_a_typed_event_wire_folds_with_its_own_fold_over_the_same_events() -> None:
    # A wire like OpenAI Responses: the whole reply is the object its last event carries.
    events = [{"type": "created"}, [{"type": "delta", "text": "a"}, {"type": "delta", "text": "b"}],
              {"type": "completed", "response": {"text": "ab"}}]
    seen: list[str] = []

    def last_response(flat):  # type: ignore[no-untyped-def]
        final = {}
        for event in flat:
            seen.append(event["type"])
            final = event.get("response", final)
        return final

    reply = WireReply([events], FoldRules(), whole=lambda parts: parts[0], fold=last_response)
    assert reply.fold_part(events) == {"text": "ab"}
    assert seen == ["created", "delta", "delta", "completed"]  # groups are flattened, in order
