"""GET /openapi.json: every route of the real app, bodies from the pydantic schemas that validate them."""

from __future__ import annotations

import re
from pathlib import Path

import schemathesis
from berth_server.http.app import create_app
from berth_server.http.openapi import REQUEST_BODIES
from berth_server.settings import Settings

from tests.unit.fakes.gateway import FakeControl, FakeGateway


def test_every_route_is_described_and_the_document_loads(tmp_path: Path) -> None:
    app = create_app(Settings(runtime_dir=tmp_path), gateway=FakeGateway(), control=FakeControl())
    document = app.test_client().get("/openapi.json").json
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    for rule in app.url_map.iter_rules():
        if rule.websocket:  # the bidirectional stream: a WebSocket, which OpenAPI cannot describe
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in described, (path, method)
    assert set(REQUEST_BODIES) <= set(app.view_functions)  # no stale endpoint names
    schema = schemathesis.openapi.from_dict(document)
    assert len(list(schema.get_all_operations())) == len(described)
