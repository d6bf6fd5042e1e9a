"""Every frame berth.eventstream writes must parse with botocore's own EventStreamBuffer."""

from __future__ import annotations

import json

import pytest
from berth.eventstream import encode_message, model_stream_error, payload_part
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

PAYLOADS = [b"", b"x", b'data: {"token": {"text": "hi"}}\n\n', "h\u00e9llo \u4e16\u754c".encode(), bytes(range(256)) * 300]


def _parse(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{len(p)}B")
def test_payload_part_round_trips(payload: bytes) -> None:
    [message] = _parse(payload_part(payload))
    assert message.payload == payload
    assert message.headers == {":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                               ":message-type": "event"}
    prelude = message.prelude
    assert prelude.total_length == len(payload_part(payload))
    assert prelude.headers_length == len(payload_part(payload)) - len(payload) - 16


def test_frames_fed_one_byte_at_a_time() -> None:
    stream = b"".join(payload_part(p) for p in PAYLOADS[:4])
    buffer = EventStreamBuffer()
    seen = []
    for i in range(len(stream)):
        buffer.add_data(stream[i:i + 1])
        seen.extend(m.payload for m in buffer)
    assert seen == PAYLOADS[:4]


def test_corrupted_frame_is_rejected_by_botocore() -> None:
    frame = bytearray(payload_part(b"data: x\n\n"))
    frame[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _parse(bytes(frame))
    frame = bytearray(payload_part(b"data: x\n\n"))
    frame[1] ^= 0x01  # the total length: the prelude CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _parse(bytes(frame))


def test_exception_event_and_custom_headers() -> None:
    [error] = _parse(model_stream_error("it broke"))
    assert error.headers[":message-type"] == "exception"
    assert error.headers[":exception-type"] == "ModelStreamError"
    assert json.loads(error.payload) == {"Message": "it broke", "ErrorCode": "ModelStreamError"}
    [custom] = _parse(encode_message({"a": "b" * 300}, b"p"))
    assert custom.headers == {"a": "b" * 300} and custom.payload == b"p"


def test_botocore_event_stream_parser_yields_payload_parts() -> None:
    """The same path boto3 takes for invoke_endpoint_with_response_stream."""
    import boto3
    from botocore.eventstream import EventStream
    from botocore.parsers import EventStreamJSONParser

    client = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    op = client.meta.service_model.operation_model("InvokeEndpointWithResponseStream")
    shape = op.output_shape.members["Body"]

    class _Raw:
        def stream(self):
            yield payload_part(b"one")
            yield payload_part(b"two")

    events = list(EventStream(_Raw(), shape, EventStreamJSONParser(), "InvokeEndpointWithResponseStream"))
    assert [e["PayloadPart"]["Bytes"] for e in events] == [b"one", b"two"]
