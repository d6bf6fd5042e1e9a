"""Token ids llama.cpp leaves out of its stream, recovered from the bytes it does send.

llama.cpp's server holds back a token that ends inside a UTF-8 character and sends it later,
merged into the text of the token that completes the character; only that last token's id is
reported. The count of tokens made so far (tokens_predicted) says how many ids are missing,
and the sent bytes minus the last token's own bytes are exactly theirs, so the ids are found by
splitting those bytes into that many vocabulary pieces.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def piece_bytes(token: str, tokenizer_model: str) -> bytes | None:
    """The bytes a vocabulary entry stands for (None when it has no fixed bytes)."""
    if tokenizer_model == "gpt2":
        decoder = _byte_decoder()
        if all(ch in decoder for ch in token):
            return bytes(decoder[ch] for ch in token)
        return None
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            return None
    return token.replace("\u2581", " ").encode("utf-8")


class TokenBytes:
    """Each token's bytes, and the reverse map, for a GGUF vocabulary."""

    def __init__(self, tokens: list[str], tokenizer_model: str, normal: list[bool]):
        self.by_id: list[bytes | None] = [piece_bytes(t, tokenizer_model) if ok else None
                                          for t, ok in zip(tokens, normal, strict=True)]
        self.by_bytes: dict[bytes, int] = {}
        for token_id, piece in enumerate(self.by_id):
            if piece:
                self.by_bytes.setdefault(piece, token_id)
        self.longest = max((len(p) for p in self.by_bytes), default=1)

    @classmethod
    def from_gguf(cls, path: Path) -> TokenBytes:
        """Read tokenizer.ggml.tokens / model / token_type from a GGUF file."""
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
        tokens = _strings(reader, "tokenizer.ggml.tokens")
        model_field = reader.fields.get("tokenizer.ggml.model")
        model = bytes(model_field.parts[model_field.data[0]]).decode() if model_field is not None else "gpt2"
        types_field = reader.fields.get("tokenizer.ggml.token_type")
        # llama.cpp's token types: 1 normal, 6 byte; control/user-defined pieces are not bytes.
        types = [int(types_field.parts[i][0]) for i in types_field.data] if types_field is not None else []
        normal = [t in (1, 6) for t in types] if len(types) == len(tokens) else [True] * len(tokens)
        return cls(tokens, model, normal)

    def recover(self, reported: list[int], sent: bytes, missing: int) -> list[int] | None:
        """The ids of `missing` tokens sent merged before the reported ones in `sent` (None when they do not split so)."""
        pieces = [self.by_id[t] if 0 <= t < len(self.by_id) else None for t in reported]
        own = b"".join(piece or b"" for piece in pieces)
        if any(piece is None for piece in pieces) or not sent.endswith(own):
            return None
        return self.segment(sent[: len(sent) - len(own)], missing)

    def segment(self, data: bytes, count: int) -> list[int] | None:
        """Split `data` into exactly `count` vocabulary pieces (longest pieces first); None if impossible."""
        if count <= 0:
            return [] if not data else None

        @functools.cache
        def split(start: int, left: int) -> tuple[int, ...] | None:
            rest = len(data) - start
            if left == 0:
                return () if rest == 0 else None
            if rest < left:
                return None
            for size in range(min(self.longest, rest - left + 1), 0, -1):
                token_id = self.by_bytes.get(data[start:start + size])
                if token_id is not None:
                    tail = split(start + size, left - 1)
                    if tail is not None:
                        return (token_id, *tail)
            return None

        found = split(0, count)
        return list(found) if found is not None else None


def _strings(reader: Any, key: str) -> list[str]:
    field = reader.fields.get(key)
    if field is None:
        return []
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
