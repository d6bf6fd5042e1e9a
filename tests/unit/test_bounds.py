"""The input boundary: out-of-range values, oversized lists and deep JSON are a 4xx naming the field on every protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from berth_server import ipc
from berth_server.canonical import choice_seed
from berth_server.engines.facts import ENGINES
from berth_server.errors import InvalidRequest
from berth_server.http.app import create_app
from berth_server.models.launch_keys import check_engine_args
from berth_server.models.launch_resolver import parse_launch
from berth_server.protocols import bounds
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.test_tgi_fakes import tgi_gateway

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
HUGE = 2**64


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return create_app(Settings(model_uid="tiny", runtime_dir=tmp_path), gateway=tgi_gateway(),
                      control=object()).test_client()


def _refused(client: FlaskClient, path: str, body: Any, field: str, status: int | tuple[int, ...]) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code in (status if isinstance(status, tuple) else (status,)), (path, body, reply.json)
    assert field in reply.json["detail"], reply.json


@pytest.mark.parametrize(("body", "field"), [
    ({**CHAT, "seed": HUGE}, "seed"),
    ({**CHAT, "max_tokens": HUGE}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": HUGE}, "max_completion_tokens"),
    ({**CHAT, "min_tokens": -1}, "min_tokens"),
    ({**CHAT, "top_k": HUGE}, "top_k"),
    ({**CHAT, "n": 65}, "n"),
    ({**CHAT, "stop": ["x"] * (bounds.MAX_STOP_STRINGS + 1)}, "stop"),
    ({**CHAT, "stop": "x" * (bounds.MAX_STOP_CHARS + 1)}, "stop"),
    ({**CHAT, "stop_token_ids": [-1]}, "stop_token_ids"),
    ({**CHAT, "tools": [{"type": "function"}] * (bounds.MAX_TOOLS + 1)}, "tools"),
    ({**CHAT, "logit_bias": {str(i): 1.0 for i in range(bounds.MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}] * (bounds.MAX_MESSAGES + 1)}, "messages"),
    ({**CHAT, "user": "u" * (bounds.MAX_NAME_CHARS + 1)}, "user"),
])
def test_openai_chat_bounds(client: FlaskClient, body: dict[str, Any], field: str) -> None:
    _refused(client, "/v1/chat/completions", body, field, 400)
    # SageMaker: a chat-shaped body is checked by the same schema (400); a number past 64 bits is refused
    # before the shape is known, with TGI's 422 like every other unreadable /invocations body.
    _refused(client, "/invocations", body, field, (400, 422))


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": [[5, -1]]}, "prompt"),
    ({"prompt": [2**40]}, "prompt"),
    ({"prompt": "x", "seed": HUGE}, "seed"),
    ({"prompt": "x", "max_tokens": HUGE}, "max_tokens"),
    ({"prompt": "x", "best_of": HUGE}, "best_of"),
])
def test_openai_completion_bounds(client: FlaskClient, body: dict[str, Any], field: str) -> None:
    _refused(client, "/v1/completions", body, field, 400)
    _refused(client, "/invocations", body, field, (400, 422))


def test_negative_token_id_names_the_position(client: FlaskClient) -> None:
    reply = client.post("/v1/completions", json={"prompt": [1, -2]})
    assert reply.json["error"]["param"] == "prompt.1" and ">= 0" in reply.json["error"]["message"].replace(
        "greater than or equal to", ">=")


@pytest.mark.parametrize(("parameters", "field"), [
    ({"seed": HUGE}, "seed"),
    ({"max_new_tokens": HUGE}, "max_new_tokens"),
    ({"top_k": HUGE}, "top_k"),
    ({"truncate": HUGE}, "truncate"),
    ({"best_of": HUGE}, "best_of"),
    ({"top_n_tokens": HUGE}, "top_n_tokens"),
    ({"stop": ["s" * (bounds.MAX_STOP_CHARS + 1)]}, "stop"),
])
def test_tgi_bounds(client: FlaskClient, parameters: dict[str, Any], field: str) -> None:
    body = {"inputs": "hi", "parameters": parameters}
    for path in ("/generate", "/generate_stream", "/", "/invocations"):
        _refused(client, path, body, field, 422)


def test_nan_and_infinity_are_refused(client: FlaskClient) -> None:
    for path, text in (("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
                       ("/generate", '{"inputs": "x", "parameters": {"temperature": Infinity}}')):
        reply = client.post(path, data=text, content_type="application/json")
        assert reply.status_code in (400, 422) and "JSON" in reply.json["detail"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate", "/invocations",
                                  "/v1/models", "/v1/embeddings", "/tokenize"])
def test_deeply_nested_json_is_a_4xx(client: FlaskClient, path: str) -> None:
    for depth in (bounds.MAX_JSON_DEPTH + 1, 100_000):
        text = '{"a": ' + "[" * depth + "]" * depth + "}"
        reply = client.post(path, data=text, content_type="application/json")
        assert reply.status_code in (400, 422), (path, depth, reply.status_code)
        assert "nests deeper" in reply.json["detail"]


def test_json_depth_counts_containers() -> None:
    assert not bounds.json_depth_exceeds({"a": [{"b": 1}]}, limit=3)
    assert bounds.json_depth_exceeds({"a": [{"b": []}]}, limit=3)
    assert choice_seed(bounds.MAX_SEED, 1) == bounds.MIN_SEED and choice_seed(5, 0) == 5 and choice_seed(None, 3) is None


def test_launch_keys_pass_only_the_engines_allowlist() -> None:
    assert check_engine_args("vllm", {"max_num_seqs": 4}) == {"max_num_seqs": 4}
    assert check_engine_args("auto", {"num_threads": 2, "max_model_len": 64}) == {"num_threads": 2, "max_model_len": 64}
    with pytest.raises(InvalidRequest, match="'max_num_seqs' is not accepted for engine 'transformers'"):
        check_engine_args("transformers", {"max_num_seqs": 4})
    with pytest.raises(InvalidRequest, match="'num_threads'.*must be a number"):
        check_engine_args("transformers", {"num_threads": {"nested": 1}})
    assert all(facts.launch_keys for facts in ENGINES)


@pytest.mark.parametrize("key", ["trust_remote_code", "download_dir", "hf_overrides", "worker_extension_cls",
                                 "load_format", "tokenizer"])
def test_code_and_file_keys_are_operator_settings(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_launch({"model_name": "qwen3", key: True})
    assert key in caught.value.message and "operator setting" in caught.value.message
    assert caught.value.param == key


def test_unknown_launch_key_is_named() -> None:
    with pytest.raises(InvalidRequest, match="'temperature_default'") as caught:
        parse_launch({"model_name": "qwen3", "temperature_default": 0.1})
    assert caught.value.param == "temperature_default"


def test_ipc_socket_paths_are_short_and_distinct(tmp_path: Path) -> None:
    long_uid = "a" * 100
    address = ipc.model_socket_address(tmp_path, long_uid)
    assert len(address) - len(str(tmp_path)) < 40
    assert ipc.model_socket_address(tmp_path, "org/model") != ipc.model_socket_address(tmp_path, "org_model")
    # Deterministic across processes (the frontend and the model process each compute it): a known value.
    assert ipc.model_socket_address(tmp_path, "m") == f"ipc://{tmp_path}/m-62c66a7a5dd70c314661.sock"


def test_deeply_nested_registration_string_is_a_4xx(tmp_path: Path) -> None:
    from tests.unit.test_xinference_routes import _client

    client = _client(tmp_path)[0]
    deep = '{"model_name": ' + "[" * 100_000 + "]" * 100_000 + "}"
    reply = client.post("/v1/model_registrations/LLM", json={"model": deep})
    assert reply.status_code == 400 and "nests too deeply" in reply.json["detail"]
