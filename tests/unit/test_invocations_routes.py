"""Routes through /invocations (X-Amzn-SageMaker-Custom-Attributes: route=...), with a fake gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from berth_server.http.app import create_app
from berth_server.protocols.sagemaker.routes import custom_attributes
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.test_tgi_fakes import tgi_gateway

ROUTE = "X-Amzn-SageMaker-Custom-Attributes"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


def make_client(tmp_path: Path, **settings: Any) -> FlaskClient:
    app = create_app(Settings(model_uid="tiny", runtime_dir=tmp_path, **settings), gateway=tgi_gateway(),
                     control=object())
    return app.test_client()


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return make_client(tmp_path)


def without_ids(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("id", "created")}


def test_custom_attributes_are_key_value_pairs() -> None:
    assert custom_attributes("trace=1, route=/v1/embeddings") == {"trace": "1", "route": "/v1/embeddings"}
    assert custom_attributes("route=/adapters;method=get") == {"route": "/adapters", "method": "get"}
    assert custom_attributes("opaque") == {} and custom_attributes(None) == {}


def test_a_routed_chat_equals_the_direct_route(client: FlaskClient) -> None:
    direct = client.post("/v1/chat/completions", json=CHAT)
    routed = client.post("/invocations", json=CHAT, headers={ROUTE: "route=/v1/chat/completions"})
    assert routed.status_code == direct.status_code == 200
    assert without_ids(routed.get_json()) == without_ids(direct.get_json())


def test_a_routed_body_is_the_routes_own_with_its_own_errors(client: FlaskClient) -> None:
    # /tokenize's body is not an /invocations shape; routed, it is /tokenize's reply exactly.
    body = {"inputs": "hello there"}
    routed = client.post("/invocations", json=body, headers={ROUTE: "route=/tokenize"})
    assert routed.status_code == 200 and routed.get_json() == client.post("/tokenize", json=body).get_json()
    # A bad chat body routed to the OpenAI route gets OpenAI's error shape and status, as there.
    bad = client.post("/invocations", json={"messages": "x"}, headers={ROUTE: "route=/v1/chat/completions"})
    direct = client.post("/v1/chat/completions", json={"messages": "x"})
    assert bad.status_code == direct.status_code == 400
    assert bad.get_json() == direct.get_json() and "error" in bad.get_json()


def test_a_get_only_route_is_read_through_invocations(client: FlaskClient) -> None:
    routed = client.post("/invocations", headers={ROUTE: "route=/info"})
    assert routed.status_code == 200 and routed.get_json() == client.get("/info").get_json()


@pytest.mark.parametrize("attributes, status", [
    ("route=/v1/nowhere", 404),
    ("route=v1/chat/completions", 422),  # not a path
    ("route=/invocations", 422),  # would loop
    ("route=/v1/chat/completions?x=1", 422),
    ("route=/v1/models", 403),  # POST /v1/models launches a model
    ("route=/v1/model_registrations/LLM", 403),  # registers one
    ("route=/adapters", 403),  # registers an adapter
    ("route=/v1/models/tiny, method=DELETE", 403),  # terminates one
    ("route=/v1/chat/completions, method=PUT", 422),  # no such method there
])
def test_refused_routes_are_4xx_before_anything_runs(client: FlaskClient, attributes: str, status: int) -> None:
    reply = client.post("/invocations", json=CHAT, headers={ROUTE: attributes})
    assert reply.status_code == status, reply.get_json()
    assert "route=" in reply.get_json()["error"]


def test_the_operator_opens_state_changing_routes(tmp_path: Path) -> None:
    client = make_client(tmp_path, invocations_routes="/adapters*, /v1/model_registrations/*")
    # Past the policy, the route's own view answers (here: its own validation of the body).
    reply = client.post("/invocations", json={"name": "a b"}, headers={ROUTE: "route=/adapters"})
    assert reply.status_code != 403
    assert client.post("/invocations", json={}, headers={ROUTE: "route=/v1/models"}).status_code == 403
