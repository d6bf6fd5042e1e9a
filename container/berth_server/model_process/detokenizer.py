"""Incremental detokenization and stop-string matching for one streaming request.

Text is produced token by token without ever splitting a UTF-8 character (byte-level BPE emits
partial bytes) and without losing the leading space a SentencePiece token carries. Special tokens
are filtered here, by id, rather than by the decoder, so that chosen ones (reasoning tags) can be
kept in the text even when skip_special_tokens is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"
_PROMPT_CONTEXT = 6  # prompt tokens fed first so the first generated token decodes in context


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into text chunks whose concatenation equals a one-shot decode."""

    def __init__(self, tokenizer: Any, skip_ids: Iterable[int] = (), prompt_ids: Sequence[int] = (),
                 use_decode_stream: bool = True):
        self._tokenizer = tokenizer
        self._skip = frozenset(skip_ids)
        context = [i for i in prompt_ids if i not in self._skip][-_PROMPT_CONTEXT:]
        self._ids: list[int] = list(context)
        self._prefix = 0
        self._read = len(context)
        self._stream: Any = None
        self._pending: list[int] = []  # ids DecodeStream holds back (an incomplete character)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        try:  # tokenizers' Rust DecodeStream does the same offset bookkeeping, faster
            from tokenizers.decoders import DecodeStream

            if backend is not None and use_decode_stream:
                self._stream = DecodeStream(context or None, skip_special_tokens=False)
                self._backend = backend
        except (ImportError, TypeError):
            self._stream = None

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=False))

    def step(self, token_id: int) -> str:
        """Add one token; return the newly completed text (may be empty while a character is partial)."""
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        if self._stream is not None:
            chunk = self._stream.step(self._backend, token_id)
            if chunk is None:
                self._pending.append(token_id)
                return ""
            self._pending.clear()
            return str(chunk)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""  # an incomplete character: wait for its next byte
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        """At the end: whatever is still held (an incomplete character decodes as U+FFFD)."""
        if self._stream is not None:  # bytes of a character that never completed: U+FFFD, as decode() gives
            pending, self._pending = self._pending, []
            return self._decode(pending) if pending else ""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text):]


class StopMatcher:
    """Finds stop strings across chunk boundaries, holding back only a possible partial match."""

    def __init__(self, stops: Iterable[str]):
        self._stops = tuple(s for s in dict.fromkeys(stops) if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to emit, the stop string that matched or None). After a match, stop feeding."""
        if not self._stops:
            return text, None
        buffer = self._held + text
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is not None:
            self._held = ""
            return buffer[:best[0]], best[1]
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self._held = buffer[len(buffer) - hold:]
        return buffer[:len(buffer) - hold], None

    def flush(self) -> str:
        """The held-back tail, released when generation ends without a match."""
        held, self._held = self._held, ""
        return held
