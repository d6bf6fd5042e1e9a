"""predict_stream's parser: lines survive chunk boundaries at every byte offset (the LangChain/LiteLLM bug)."""

from __future__ import annotations

import json

import pytest
from berth.streaming import LineBuffer, StreamError, iter_events, parse_line

OPENAI_SSE = (
    'data: {"choices": [{"delta": {"content": "h\u00e9"}}]}\n\n'
    'data: {"choices": [{"delta": {"content": " \u4e16"}}]}\r\n\r\n'
    ": keep-alive comment\n\n"
    "data: [DONE]\n\n"
).encode()
TGI_SSE = (
    b'data:{"token": {"id": 1, "text": "a"}, "generated_text": null}\n\n'
    b'data:{"token": {"id": 2, "text": "b"}, "generated_text": "ab", "details": {"finish_reason": "length"}}\n\n'
)


def _expected(raw: bytes) -> list:
    return [json.loads(line.split(":", 1)[1]) for line in raw.decode().splitlines()
            if line.startswith("data:") and "[DONE]" not in line]


@pytest.mark.parametrize("raw", [OPENAI_SSE, TGI_SSE], ids=["openai", "tgi"])
def test_every_split_point(raw: bytes) -> None:
    expected = _expected(raw)
    assert len(expected) == 2
    for cut in range(len(raw) + 1):
        assert list(iter_events([raw[:cut], raw[cut:]])) == expected, f"split at byte {cut}"


@pytest.mark.parametrize("raw", [OPENAI_SSE, TGI_SSE], ids=["openai", "tgi"])
def test_one_byte_chunks(raw: bytes) -> None:
    assert list(iter_events(raw[i:i + 1] for i in range(len(raw)))) == _expected(raw)


def test_last_line_without_newline_is_kept() -> None:
    assert list(iter_events([b'data: {"a": 1}\n\ndata: {"b": 2}'])) == [{"a": 1}, {"b": 2}]


def test_in_stream_error_raises() -> None:
    raw = b'data: {"a": 1}\n\ndata: {"error": "boom", "error_type": "generation"}\n\n'
    events = iter_events([raw])
    assert next(events) == {"a": 1}
    with pytest.raises(StreamError, match="boom"):
        next(events)
    with pytest.raises(StreamError, match="bad"):
        list(iter_events([b'data: {"error": {"message": "bad", "type": "x"}}\n\n']))


def test_other_sse_fields_are_ignored() -> None:
    assert parse_line("event: message") is None
    assert parse_line("id: 3") is None
    assert parse_line("data: [DONE]") is None
    assert parse_line("") is None


def test_line_buffer_keeps_partial_utf8() -> None:
    buffer = LineBuffer()
    text = "\u4e16\n".encode()
    assert buffer.feed(text[:1]) == []
    assert buffer.feed(text[1:]) == ["\u4e16"]
    assert buffer.flush() == []
