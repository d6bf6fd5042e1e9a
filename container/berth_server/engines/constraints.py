"""Constrained decoding with xgrammar: compile a canonical Constraint once, mask each row's logits.

The model process compiles (off its event loop, through xgrammar's bounded cache) before it accepts a
request, so a schema, regex or grammar that cannot compile is a 4xx naming the field, never a 500.
The transformers engine then keeps one RowConstraint per constrained row; free rows pay nothing.
xgrammar and torch are imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from berth_server.canonical import Constraint
from berth_server.errors import InvalidRequest

log = logging.getLogger(__name__)

# xgrammar's compiled-grammar cache is bounded by bytes; 64 MiB holds hundreds of typical schemas.
CACHE_LIMIT_BYTES = 64 << 20
_COMPACT = (",", ":")
_KIND_WORDS = {
    "json_schema": "JSON schema", "json_object": "JSON object", "regex": "regex", "choice": "choice",
    "grammar": "grammar", "structural_tag": "tool-call structure",
}


def choice_grammar(choices: Iterable[str]) -> str:
    """EBNF accepting exactly one of the strings (as vLLM's xgrammar backend builds it)."""
    def literal(text: str) -> str:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{escaped}"'

    return "root ::= " + " | ".join(literal(c) for c in choices)


def check_shape(constraint: Constraint) -> None:
    """Reject what no engine can compile, before any engine sees it (InvalidRequest naming the field)."""
    if constraint.kind == "choice" and not constraint.choices:
        raise InvalidRequest(f"{constraint.param}: choice needs at least one string", param=constraint.param)
    if constraint.kind in ("json_schema", "structural_tag"):
        try:
            json.loads(constraint.value)
        except ValueError as exc:
            raise InvalidRequest(f"{constraint.param}: not valid JSON: {exc}", param=constraint.param) from None
    if constraint.kind in ("regex", "grammar") and not constraint.value.strip():
        raise InvalidRequest(f"{constraint.param}: the {constraint.kind} is empty", param=constraint.param)


class ConstraintCompiler:
    """Compiles constraints over one model's tokenizer; thread-safe, cached by xgrammar."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids) or None)
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_limit_bytes=CACHE_LIMIT_BYTES)

    def compile(self, constraint: Constraint) -> Any:
        """Compile (blocking; cached). InvalidRequest saying why when it cannot be compiled."""
        check_shape(constraint)
        compiler = self._compiler
        try:
            if constraint.kind == "json_schema":
                # Compact JSON (no free whitespace), as vLLM's disable_any_whitespace: small models
                # otherwise loop on spaces and newlines.
                return compiler.compile_json_schema(constraint.value, any_whitespace=False, separators=_COMPACT)
            if constraint.kind == "json_object":
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                    separators=_COMPACT)
            if constraint.kind == "regex":
                return compiler.compile_regex(constraint.value)
            if constraint.kind == "choice":
                return compiler.compile_grammar(choice_grammar(constraint.choices))
            if constraint.kind == "grammar":
                return compiler.compile_grammar(constraint.value)
            return compiler.compile_structural_tag(constraint.value)
        except InvalidRequest:
            raise
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError/its own types
            what = _KIND_WORDS.get(constraint.kind, constraint.kind)
            reason = " ".join(str(exc).split())[:400] or type(exc).__name__
            raise InvalidRequest(f"{constraint.param}: the {what} cannot be compiled: {reason}",
                                 param=constraint.param) from None

    async def compile_async(self, constraint: Constraint) -> Any:
        """compile() on a worker thread, so the model process's event loop keeps streaming."""
        return await asyncio.to_thread(self.compile, constraint)


class RowConstraint:
    """One row's grammar state: masks its logits, advances on each sampled token."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits_row: Any) -> None:
        """Set the logits [1, V] of tokens the grammar forbids now to -inf (in place)."""
        import xgrammar as xgr

        if self.matcher.is_terminated():
            return
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgr.apply_token_bitmask_inplace(logits_row, self.bitmask.to(logits_row.device),
                                        vocab_size=self.vocab_size)

    def accept(self, token: int) -> None:
        """Advance past the sampled token (the mask made it legal)."""
        if not self.matcher.is_terminated() and not self.matcher.accept_token(token):
            log.warning("grammar rejected sampled token %d", token)
