"""The launcher's control RPC: one call shape, typed errors carried back, msgpack on the wire.

The frontend asks the launcher to list, launch and terminate models and to manage registrations;
model processes push their status to it. Methods are plain strings so the launcher's handler
table stays the one place that knows them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from berth_server.canonical import ErrorRecord


class ControlCall(msgspec.Struct, kw_only=True):
    """A request to the launcher."""

    method: str
    params: dict[str, Any] = {}


class ControlReply(msgspec.Struct, kw_only=True):
    """The launcher's answer: a result, or an error."""

    result: Any = None
    error: ErrorRecord | None = None  # errors.from_record rebuilds the typed error


_encoder = msgspec.msgpack.Encoder()
_call_decoder = msgspec.msgpack.Decoder(ControlCall)
_reply_decoder = msgspec.msgpack.Decoder(ControlReply)


def encode(message: msgspec.Struct) -> bytes:
    """Serialize a control message."""
    return _encoder.encode(message)


def decode_call(frame: bytes) -> ControlCall:
    """Launcher side: parse a call."""
    return _call_decoder.decode(frame)


def decode_reply(frame: bytes) -> ControlReply:
    """Frontend side: parse a reply."""
    return _reply_decoder.decode(frame)
