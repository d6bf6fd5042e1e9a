"""BERTH_API_KEY guards every route of the real app: each route is tried without, with a wrong and with the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from berth_server.http.app import create_app
from berth_server.http.auth import OPEN_PATHS
from berth_server.http.webui import is_ui_path
from berth_server.settings import Settings
from flask import Flask

from tests.unit.test_xinference_routes import FakeControl, FakeGateway

KEY = "s3cret-key"


def _app(tmp_path: Path, **settings: object) -> Flask:
    config = Settings(home=tmp_path / "home", api_key=KEY, runtime_dir=tmp_path, **settings)  # type: ignore[arg-type]
    return create_app(config, gateway=FakeGateway(), control=FakeControl(config))


def _routes(app: Flask) -> list[tuple[str, str]]:
    """(method, path) of every route, placeholders filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: {"model_type": "LLM"}.get(m.group(1), "x"), rule.rule)
        routes += [(method, path) for method in sorted(rule.methods or ()) if method not in ("HEAD", "OPTIONS")]
    return routes


def test_the_app_has_the_routes_we_think(tmp_path: Path) -> None:
    paths = {path for _, path in _routes(_app(tmp_path))}
    for expected in ("/invocations", "/generate", "/v1/chat/completions", "/v1/models", "/v1/models/x",
                     "/v1/model_registrations/LLM", "/tokenize", "/info", "/metrics", "/v1/rerank"):
        assert expected in paths


def test_every_route_but_the_open_ones_needs_the_key(tmp_path: Path) -> None:
    app = _app(tmp_path)
    client = app.test_client()
    for method, path in _routes(app):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": KEY[:-1]}, {"Authorization": "Bearer "}):
            reply = client.open(path, method=method, json={}, headers=headers)
            expected_open = path in OPEN_PATHS or is_ui_path(path)  # the UI's files carry no data
            assert (reply.status_code != 401) == expected_open, (method, path, headers, reply.status_code)
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-Api-Key": KEY}):
            reply = client.open(path, method=method, json={}, headers=headers)
            assert reply.status_code != 401, (method, path, reply.status_code)


@pytest.mark.parametrize(("public", "status"), [(False, 401), (True, 200)])
def test_metrics_are_open_only_when_public(tmp_path: Path, public: bool, status: int) -> None:
    assert _app(tmp_path, metrics_public=public).test_client().get("/metrics").status_code == status
