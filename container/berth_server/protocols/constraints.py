"""Wire-level output constraints (OpenAI, vLLM's extension, TGI) -> the one canonical Constraint.

Pure data: nothing here compiles anything. The model process compiles the result (and says why a
schema, regex or grammar cannot compile); this module only refuses shapes no engine could take.
"""

from __future__ import annotations

import json
from typing import Any

from berth_server.canonical import Constraint
from berth_server.errors import InvalidRequest

_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def _schema_text(value: Any, param: str) -> str:
    """A JSON schema (object, or JSON text of one) as JSON text, its keys in the order given: the grammar
    writes an object's properties in the schema's order (as OpenAI's structured outputs do)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidRequest(f"{param}: the schema is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, (dict, bool)):
        raise InvalidRequest(f"{param}: a JSON schema must be an object", param=param)
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{param} must be a non-empty string", param=param)
    return value


def _choices(value: Any, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise InvalidRequest(f"{param} must be a non-empty list of strings", param=param)
    return tuple(value)


def response_format(value: dict[str, Any] | None) -> Constraint | None:
    """OpenAI's response_format ({type: text|json_object|json_schema}) and TGI's ({type, value})."""
    if not value:
        return None
    kind, param = value.get("type"), "response_format"
    inner = value.get("value")  # TGI: {"type": "json_object"|"json"|"regex"|"json_schema", "value": ...}
    if kind == "text":
        return None
    if kind in ("json_object", "json") and inner is not None:
        return Constraint(kind="json_schema", value=_schema_text(inner, param), param=param)
    if kind == "json_object":
        return Constraint(kind="json_object", param=param)
    if kind == "regex":
        return Constraint(kind="regex", value=_text(inner, "response_format.value"), param=param)
    if kind == "json_schema":
        spec = value.get("json_schema") if value.get("json_schema") is not None else inner
        if not isinstance(spec, dict):
            raise InvalidRequest("response_format.json_schema must be an object with a 'schema'",
                                 param="response_format.json_schema")
        schema = spec.get("schema", spec.get("json_schema", {"type": "object"}))
        return Constraint(kind="json_schema", value=_schema_text(schema, "response_format.json_schema.schema"),
                          param=param)
    raise InvalidRequest(f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
                         param="response_format.type")


def structured_outputs(value: dict[str, Any] | None) -> Constraint | None:
    """vLLM's structured_outputs: exactly one of json, regex, choice, grammar, json_object, structural_tag."""
    if not value:
        return None
    given = [k for k in _VLLM_KINDS if value.get(k) is not None and value.get(k) is not False]
    if len(given) != 1:
        raise InvalidRequest("structured_outputs needs exactly one of " + ", ".join(_VLLM_KINDS)
                             + (f" (got {', '.join(given)})" if given else ""), param="structured_outputs")
    kind = given[0]
    param = f"structured_outputs.{kind}"
    raw = value[kind]
    if kind == "json":
        return Constraint(kind="json_schema", value=_schema_text(raw, param), param=param)
    if kind == "choice":
        return Constraint(kind="choice", choices=_choices(raw, param), param=param)
    if kind == "json_object":
        return Constraint(kind="json_object", param=param)
    if kind == "structural_tag":
        text = raw if isinstance(raw, str) else json.dumps(raw)
        return Constraint(kind="structural_tag", value=text, param=param)
    return Constraint(kind="regex" if kind == "regex" else "grammar", value=_text(raw, param), param=param)


def guided(fields: dict[str, Any]) -> Constraint | None:
    """vLLM's older guided_json / guided_regex / guided_choice / guided_grammar (at most one)."""
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise InvalidRequest(f"use one of {', '.join(sorted(given))}, not several", param=min(given))
    name, raw = next(iter(given.items()))
    if name == "guided_json":
        return Constraint(kind="json_schema", value=_schema_text(raw, name), param=name)
    if name == "guided_choice":
        return Constraint(kind="choice", choices=_choices(raw, name), param=name)
    return Constraint(kind=name.removeprefix("guided_"), value=_text(raw, name), param=name)  # type: ignore[arg-type]


def tgi_grammar(value: Any) -> Constraint | None:
    """TGI's parameters.grammar: {type: json|json_object, value: schema} or {type: regex, value: pattern}."""
    if value is None:
        return None
    if not isinstance(value, dict) or "type" not in value or "value" not in value:
        raise InvalidRequest("`grammar` must be {\"type\": \"json\" | \"regex\", \"value\": ...}", param="grammar")
    kind = value["type"]
    if kind in ("json", "json_object"):
        return Constraint(kind="json_schema", value=_schema_text(value["value"], "grammar"), param="grammar")
    if kind == "regex":
        return Constraint(kind="regex", value=_text(value["value"], "grammar"), param="grammar")
    raise InvalidRequest(f"grammar type {kind!r} is not supported; use json or regex", param="grammar")


def json_format(value: Any, param: str = "format") -> Constraint | None:
    """A "json" switch or a JSON schema (Ollama's `format`): any JSON object, or one matching the schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return Constraint(kind="json_object", param=param)
    if isinstance(value, dict):
        return Constraint(kind="json_schema", value=_schema_text(value, param), param=param)
    raise InvalidRequest(f'{param} must be "json" or a JSON schema object', param=param)


def one_of(*constraints: Constraint | None) -> Constraint | None:
    """The single constraint given, or InvalidRequest naming the fields that compete."""
    given = [c for c in constraints if c is not None]
    if len(given) > 1:
        names = ", ".join(c.param for c in given)
        raise InvalidRequest(f"only one output constraint per request ({names} were given)", param=given[1].param)
    return given[0] if given else None
