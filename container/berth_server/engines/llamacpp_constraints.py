"""Constraints on the llama.cpp engine: its own grammars (GBNF, llguidance, json_schema) and logit biases.

JSON schemas go to llama.cpp's `json_schema` (its json_schema_to_grammar); choices go to `grammar`
as they are; tool-call structures become llguidance grammars with the arguments as `%json`;
regexes, EBNF grammars and other structural tags are printed by xgrammar (the model process
compiled them already) and rewritten in GBNF's dialect (to_gbnf). logit_bias, allowed_token_ids
and single-token bad words become llama.cpp logit biases (false = never); a bad word of several
tokens has no llama.cpp equivalent and is refused with a 4xx naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from berth_server import errors
from berth_server.engines.base import EngineRequest
from berth_server.engines.constraints import choice_grammar


def _ebnf(kind: str, value: str) -> str:
    """A regex, EBNF grammar or structural tag as llama.cpp's `grammar`: llguidance, else xgrammar's print as GBNF."""
    import xgrammar as xgr

    if kind == "regex":
        grammar = xgr.Grammar.from_regex(value)
    elif kind == "grammar":
        grammar = xgr.Grammar.from_ebnf(value)
    else:
        lark = structural_tag_lark(value)
        if lark is not None:
            return lark
        grammar = xgr.Grammar.from_structural_tag(value)
    return to_gbnf(str(grammar))


class _Uncovered(Exception):
    """A structural-tag form structural_tag_lark does not write; xgrammar's EBNF is tried instead."""


def structural_tag_lark(value: str) -> str | None:
    """A structural tag as a llguidance grammar (llama.cpp takes those as `grammar` too), or None.

    The JSON inside tool calls goes in as llguidance's `%json`, the machinery llama.cpp's own
    json_schema uses, which also honours `pattern`s (xgrammar prints those as a Regex(...) macro
    GBNF cannot express). Covers const_string, json_schema, sequence, or, tag and
    tags_with_separator; None for other forms.
    """
    tag = json.loads(value)
    if not isinstance(tag, dict) or tag.get("type") != "structural_tag":
        return None
    rules: list[str] = []
    try:
        start = _lark(tag.get("format"), rules)
    except (_Uncovered, KeyError, TypeError, AttributeError):
        return None
    return "\n".join(["%llguidance {}", f"start: {start}", *rules])


def _lark(node: Any, rules: list[str]) -> str:
    """A llguidance expression for one structural-tag node; named rules go to `rules`."""
    kind = node.get("type")
    if kind == "const_string":
        return json.dumps(str(node["value"]))
    if kind == "json_schema":
        schema = node["json_schema"]
        schema = json.loads(schema) if isinstance(schema, str) else dict(schema)
        if node.get("max_whitespace_cnt") is not None:  # xgrammar's cap on free whitespace: write it as json.dumps does
            schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        return _rule(rules, "json", f"%json {json.dumps(schema)}")
    if kind in ("sequence", "or"):
        parts = [_lark(element, rules) for element in node["elements"]]
        return "(" + (" " if kind == "sequence" else " | ").join(parts) + ")"
    if kind == "tag":
        return f"({json.dumps(str(node['begin']))} {_lark(node['content'], rules)} {json.dumps(str(node['end']))})"
    if kind == "tags_with_separator":
        one = _rule(rules, "tags", " | ".join(_lark(t, rules) for t in node["tags"]))
        calls = one if node.get("stop_after_first") else f"{one} ({json.dumps(str(node['separator']))} {one})*"
        return f"({calls})" if node.get("at_least_one") else f"({calls})?"
    raise _Uncovered(kind)


def _rule(rules: list[str], prefix: str, body: str) -> str:
    """Add a named rule (named after its place in `rules`, so names never clash) and return its name."""
    name = f"{prefix}{len(rules)}"
    rules.append(f"{name}: {body}")
    return name


# GBNF knows only these escapes (llama-grammar.cpp's parse_char); xgrammar also prints C's.
_GBNF_ESCAPES = frozenset('xuUtrn\\"[]')
_C_ESCAPES = {"0": 0x00, "a": 0x07, "b": 0x08, "f": 0x0C, "v": 0x0B, "e": 0x1B}
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(-1|\d*)\s*)?\}")


def to_gbnf(ebnf: str) -> str:
    """xgrammar's printed EBNF in llama.cpp's GBNF dialect.

    Rule names take '-' for '_'; `{m, n}` is written `{m,n}` and xgrammar's unbounded `{m, -1}` as
    `{m,}`; escapes GBNF lacks (`\\0`, `\\-`, `\\/`, `\\?`, ...) become `\\xNN`; lookahead assertions
    `(= ...)`, which GBNF has no syntax for, are dropped (xgrammar adds them where the grammar already
    fixes what follows, to match faster). ValueError for xgrammar's macros, e.g. Regex(...).
    """
    out: list[str] = []
    quote: str | None = None  # '"' inside a literal, ']' inside a class
    i = 0
    while i < len(ebnf):
        char = ebnf[i]
        if quote is not None:
            if char == "\\" and i + 1 < len(ebnf):
                escaped = ebnf[i + 1]
                code = _C_ESCAPES.get(escaped, ord(escaped))
                out.append(ebnf[i:i + 2] if escaped in _GBNF_ESCAPES else
                           f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}")
                i += 2
                continue
            quote = None if char == quote else quote
        elif char in '"[':
            quote = '"' if char == '"' else "]"
        elif ebnf.startswith("(=", i):
            i = _group_end(ebnf, i)
            continue
        elif (repeat := _REPEAT.match(ebnf, i)) is not None:
            low, high = repeat.group(1), repeat.group(2)
            out.append("{" + low + ("" if high is None else "," + ("" if high == "-1" else high)) + "}")
            i = repeat.end()
            continue
        elif char == "_":
            char = "-"
        elif char == "(" and out and (out[-1].isalnum() or out[-1] == "-"):
            name = re.search(r"[\w-]+$", "".join(out[-40:]))
            raise ValueError(f"llama.cpp's grammars cannot express xgrammar's {name.group() if name else ''}(...)")
        out.append(char)
        i += 1
    return "".join(out)


def _group_end(text: str, start: int) -> int:
    """The index just past the parenthesised group opening at `start` (literals and classes skipped)."""
    depth, quote, i = 0, None, start
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in '"[':
            quote = '"' if char == '"' else "]"
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def constraint_fields(request: EngineRequest, n_vocab: int) -> dict[str, Any]:
    """The llama.cpp completion-body fields for a request's constraint and token-level biases."""
    s = request.sampling
    body: dict[str, Any] = {}
    c = s.constraint
    if c is not None:
        if c.kind == "json_schema":
            body["json_schema"] = json.loads(c.value)
        elif c.kind == "json_object":
            body["json_schema"] = {"type": "object"}
        elif c.kind == "choice":
            body["grammar"] = choice_grammar(c.choices)
        else:  # xgrammar's EBNF (a user's too) may use '_' in rule names and escapes GBNF lacks
            try:
                body["grammar"] = _ebnf(c.kind, c.value)
            except ValueError as exc:
                raise errors.InvalidRequest(f"{exc} (on the llama.cpp engine)", param=c.param) from None
    bias: dict[int, float | bool] = dict(s.logit_bias)
    if s.allowed_token_ids is not None:
        allowed = set(s.allowed_token_ids)
        bias.update({token: False for token in range(n_vocab) if token not in allowed})
    for word in request.bad_words_ids:
        if len(word) != 1:
            raise errors.InvalidRequest("bad_words of more than one token are not supported by the llama.cpp "
                                        "engine", param="bad_words")
        bias[word[0]] = False
    if bias:
        body["logit_bias"] = [[token, value] for token, value in bias.items()]
    return body
