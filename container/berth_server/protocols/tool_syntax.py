"""tool_choice "required" or a named function -> a Constraint in the model's own tool-call syntax.

With a tool-call parser (hermes, llama3_json, mistral, deepseek_v3) the constraint is an xgrammar
structural tag: the model must write one or more calls (one with parallel_tool_calls false, exactly
the named one for a named choice) in its markup, with arguments valid against each tool's
parameters. Without a parser it falls back to vLLM's JSON form: the arguments object for a named
choice, a [{"name", "parameters"}] array for "required". Pure data: the model process compiles it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from berth_server.canonical import Constraint
from berth_server.errors import InvalidRequest

# DeepSeek V3's markers (full-width bars and U+2581), as its chat template writes them.
DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
MISTRAL_CALLS = "[TOOL_CALLS]"


@dataclass(frozen=True)
class ToolChoice:
    """A validated tool_choice: mode "none", "auto", "required" or "named" (with the function's name)."""

    mode: str
    name: str | None = None

    @property
    def forced(self) -> bool:
        """Whether the output must be calls (required or named)."""
        return self.mode in ("required", "named")


def check_tool_choice(tools: list[dict[str, Any]] | None, tool_choice: Any) -> ToolChoice:
    """Validate tool_choice against tools (OpenAI's rules); InvalidRequest naming the field."""
    names = [function_of(tool)["name"] for tool in tools or []]
    if tool_choice is None:
        return ToolChoice("auto" if tools else "none")
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs tools", param="tool_choice")
        return ToolChoice(tool_choice)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str) or name not in names:
            raise InvalidRequest(f"tool_choice names function {name!r}, which is not among the tools"
                                 f" ({', '.join(names) or 'none given'})", param="tool_choice")
        return ToolChoice("named", name)
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\","
                         " \"function\": {\"name\": ...}}", param="tool_choice")


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The function definition of a tool, checked to have a name."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type", "function") != "function" or not isinstance(function, dict) \
            or not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidRequest("each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                             param="tools")
    return function


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object", "properties": {}}


def _header(parser: str, name: str) -> tuple[str, str]:
    """(begin, end) around one call's arguments object in a parser's markup."""
    quoted = json.dumps(name, ensure_ascii=False)
    if parser == "hermes":
        return f'<tool_call>\n{{"name": {quoted}, "arguments": ', "}\n</tool_call>"
    if parser == "llama3_json":
        return f'{{"name": {quoted}, "parameters": ', "}"
    if parser == "mistral":
        return f'{{"name": {quoted}, "arguments": ', "}"
    if parser == "deepseek_v3":
        return f"{DS_CALL_BEGIN}function{DS_SEP}{name}\n```json\n", f"\n```{DS_CALL_END}"
    raise InvalidRequest(f"no tool-call syntax for parser {parser!r}", param="tool_choice")


_SEPARATORS = {"hermes": "\n", "llama3_json": "; ", "mistral": ", ", "deepseek_v3": "\n"}
_AROUND = {"mistral": (MISTRAL_CALLS + "[", "]"), "deepseek_v3": (DS_CALLS_BEGIN, DS_CALLS_END)}


def _structural_tag(parser: str, functions: list[dict[str, Any]], parallel: bool) -> str:
    tags = []
    for function in functions:
        begin, end = _header(parser, function["name"])
        tags.append({"type": "tag", "begin": begin, "end": end,
                     # One space at most between tokens: small models otherwise pad with newlines.
                     "content": {"type": "json_schema", "json_schema": _parameters(function),
                                 "max_whitespace_cnt": 1}})
    calls: dict[str, Any] = {"type": "tags_with_separator", "tags": tags, "separator": _SEPARATORS[parser],
                             "at_least_one": True, "stop_after_first": not parallel}
    if parser in _AROUND:
        opening, closing = _AROUND[parser]
        calls = {"type": "sequence", "elements": [{"type": "const_string", "value": opening}, calls,
                                                  {"type": "const_string", "value": closing}]}
    return json.dumps({"type": "structural_tag", "format": calls}, ensure_ascii=False)


def _json_fallback(functions: list[dict[str, Any]], choice: ToolChoice, parallel: bool) -> str:
    if choice.mode == "named":
        return json.dumps(_parameters(functions[0]), sort_keys=True)
    items = [{"type": "object", "properties": {"name": {"const": f["name"]}, "parameters": _parameters(f)},
              "required": ["name", "parameters"], "additionalProperties": False} for f in functions]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return json.dumps(schema, sort_keys=True)


def tool_constraint(tools: list[dict[str, Any]] | None, choice: ToolChoice, parser: str | None,
                    parallel: bool) -> Constraint | None:
    """The constraint forcing calls for required / named tool_choice (None for auto and none)."""
    if not choice.forced:
        return None
    functions = [function_of(tool) for tool in tools or []]
    if choice.mode == "named":
        functions = [f for f in functions if f["name"] == choice.name]
    if parser is None:
        return Constraint(kind="json_schema", value=_json_fallback(functions, choice, parallel), param="tool_choice")
    return Constraint(kind="structural_tag", value=_structural_tag(parser, functions, parallel and choice.mode != "named"),
                      param="tool_choice")
