"""Encode AWS event-stream frames (the framing of InvokeEndpointWithResponseStream); botocore only parses it."""

from __future__ import annotations

import json
import struct
import zlib

_STRING_HEADER = 7  # the event-stream header value type for a UTF-8 string
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _encode_headers(headers: dict[str, str]) -> bytes:
    """Encode string headers: name length (1 byte), name, type 7, value length (2 bytes), value."""
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING_HEADER, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame: total length, headers length, prelude CRC32, headers, payload, message CRC32."""
    raw_headers = _encode_headers(headers)
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + raw_headers + payload
    return head + _CRC.pack(zlib.crc32(head))


def payload_part(data: bytes) -> bytes:
    """A PayloadPart event carrying raw response bytes, as SageMaker runtime streams them."""
    return encode_message(
        {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"},
        data,
    )


def model_stream_error(message: str, error_code: str = "ModelStreamError") -> bytes:
    """A ModelStreamError exception event: the way SageMaker reports a failure after the stream began."""
    body = json.dumps({"Message": message, "ErrorCode": error_code}).encode()
    return encode_message(
        {":exception-type": "ModelStreamError", ":content-type": "application/json", ":message-type": "exception"},
        body,
    )

