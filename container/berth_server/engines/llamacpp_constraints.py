"""Constraints on the llama.cpp engine: its own grammars (GBNF, json_schema_to_grammar) and logit biases.

JSON schemas go to llama.cpp's `json_schema` (its json_schema_to_grammar); choice and EBNF grammars
go to `grammar` as they are (xgrammar's EBNF is GBNF); regexes and tool-call structures are turned
into EBNF by xgrammar first. logit_bias, allowed_token_ids and single-token bad words become
llama.cpp logit biases (false = never); a bad word of several tokens has no llama.cpp equivalent
and is refused with a 4xx naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from berth_server import errors
from berth_server.engines.base import EngineRequest
from berth_server.engines.constraints import choice_grammar


def _ebnf(kind: str, value: str) -> str:
    """xgrammar's EBNF text for a regex or a structural tag (the model process already compiled it)."""
    import xgrammar as xgr

    grammar = xgr.Grammar.from_regex(value) if kind == "regex" else xgr.Grammar.from_structural_tag(value)
    return to_gbnf(str(grammar))


def to_gbnf(ebnf: str) -> str:
    """xgrammar's printed EBNF in llama.cpp's GBNF dialect: rule names with '-' (not '_'), `{m,n}` unspaced.

    Only text outside string literals and character classes is touched.
    """
    out: list[str] = []
    quote: str | None = None  # '"' inside a literal, ']' inside a class
    escaped = False
    for char in ebnf:
        if quote is not None:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in '"[':
            quote = '"' if char == '"' else "]"
        out.append("-" if char == "_" else char)
    return re.sub(r"\{(\d+),\s+(\d*)\}", r"{\1,\2}", "".join(out))


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
        elif c.kind == "grammar":
            body["grammar"] = c.value
        else:
            body["grammar"] = _ebnf(c.kind, c.value)
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
