"""Xinference routes through the real Flask app, with management handlers over a fake supervisor."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path
from typing import Any

from berth_server.errors import NotFound
from berth_server.http.app import create_app
from berth_server.models.management import control_handlers
from berth_server.settings import Settings
from flask.testing import FlaskClient

from tests.unit.fakes.gateway import FakeGateway, FakeModel

from .test_management import FakeSupervisor
from .test_registration import LLM, _with


class FakeControl:
    """The launcher's control RPC, in-process: management handlers plus terminate."""

    def __init__(self, settings: Settings) -> None:
        self.supervisor = FakeSupervisor(settings)
        self.handlers = control_handlers(settings, self.supervisor)

    def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any:
        if method == "terminate":
            if params["uid"] not in self.supervisor.statuses():
                raise NotFound(f"model uid {params['uid']!r} not found")
            return asyncio.run(self.supervisor.terminate(params["uid"]))
        if method == "status":
            return {uid: {"state": s.state} for uid, s in self.supervisor.statuses().items()}
        return asyncio.run(self.handlers[method](params))


def encoder_gateway() -> FakeGateway:
    """The fake gateway serving the embedding model 'emb' and the reranker 'rr' (no default model)."""
    return FakeGateway(model=FakeModel(uid="emb", names=(), others=("emb", "rr")))


def _client(tmp_path: Path, api_key: str | None = None) -> tuple[FlaskClient, FakeControl, Path]:
    settings = Settings(home=tmp_path / "home", api_key=api_key, runtime_dir=tmp_path)
    control = FakeControl(settings)
    app = create_app(settings, gateway=encoder_gateway(), control=control)
    weights = tmp_path / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return app.test_client(), control, weights


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    return str(response.get_json()["detail"])


def test_cluster_auth(tmp_path: Path) -> None:
    client, _, _ = _client(tmp_path)
    assert client.get("/v1/cluster/auth").get_json() == {"auth": False}
    keyed, _, _ = _client(tmp_path / "k", api_key="secret")
    assert keyed.get("/v1/cluster/auth").get_json() == {"auth": True}  # open even with a key
    assert _error(keyed.get("/v1/model_registrations/LLM"), 401)


def test_registration_routes(tmp_path: Path) -> None:
    client, _, _ = _client(tmp_path)
    listed = client.get("/v1/model_registrations/LLM").get_json()
    assert {"model_name": "qwen3", "is_builtin": True} in listed
    detailed = client.get("/v1/model_registrations/LLM?detailed=true").get_json()
    assert any(r["model_name"] == "qwen3" and r["thinking_variable"] == "enable_thinking" for r in detailed)
    body = {"model": json.dumps(LLM), "persist": True, "worker_ip": None}
    assert client.post("/v1/model_registrations/LLM", json=body).status_code == 200
    assert client.get("/v1/model_registrations/LLM/custom-qwen-2_5").get_json()["model_family"]
    assert "already registered" in _error(client.post("/v1/model_registrations/LLM", json=body), 409)
    assert "built-in" in _error(client.post("/v1/model_registrations/LLM",
                                            json={"model": _with(LLM, model_name="qwen3")}), 409)
    assert "JSON" in _error(client.post("/v1/model_registrations/LLM", json={"model": "{oops"}), 400)
    assert "model_name" in _error(client.post("/v1/model_registrations/LLM",
                                              json={"model": _with(LLM, model_name="bad name!")}), 400)
    assert "model" in _error(client.post("/v1/model_registrations/LLM", json={"persist": True}), 400)
    assert "JSON" in _error(client.post("/v1/model_registrations/LLM", data="{x",
                                        content_type="application/json"), 400)
    assert "model_type" in _error(client.get("/v1/model_registrations/video"), 400)
    assert client.delete("/v1/model_registrations/LLM/custom-qwen-2_5").status_code == 200
    assert "custom-qwen-2_5" in _error(client.get("/v1/model_registrations/LLM/custom-qwen-2_5"), 404)
    assert _error(client.delete("/v1/model_registrations/LLM/custom-qwen-2_5"), 404)


def test_launch_describe_terminate(tmp_path: Path) -> None:
    client, control, weights = _client(tmp_path)
    response = client.post("/v1/models?wait_ready=false", json={
        "model_name": "llama-3.2-instruct", "model_path": str(weights), "model_uid": "l1", "replica": 1,
        "n_gpu": "auto", "enable_thinking": None, "max_num_seqs": 4})
    assert response.get_json() == {"model_uid": "l1"}
    config, wait_ready = control.supervisor.launched[-1]
    assert wait_ready is False and config.engine_args == {"max_num_seqs": 4}
    described = client.get("/v1/models/l1").get_json()
    assert described["model_type"] == "LLM" and "chat" in described["model_ability"]
    assert client.get("/v1/models/l1/progress").get_json() == {"progress": 0.5}
    assert client.get("/v1/models/instances?model_uid=l1").get_json()[0]["status"] == "CREATING"
    assert "l1" in _error(client.post("/v1/models", json={"model_name": "llama-3.2-instruct",
                                                          "model_path": str(weights), "model_uid": "l1"}), 409)
    assert client.delete("/v1/models/l1").status_code == 200
    assert "l1" in _error(client.get("/v1/models/l1"), 404)
    assert _error(client.delete("/v1/models/l1"), 404)
    assert _error(client.get("/v1/models/nope/progress"), 404)
    assert "nope" in _error(client.post("/v1/models", json={"model_name": "nope"}), 404)
    assert "/missing/dir" in _error(client.post("/v1/models", json={"model_name": "qwen3",
                                                                     "model_path": "/missing/dir"}), 400)
    assert "method" in _error(client.post("/v1/models", json={"model_name": "qwen3", "method": "x"}), 400)


def test_embeddings_and_rerank(tmp_path: Path) -> None:
    client, _, _ = _client(tmp_path)
    reply = client.post("/v1/embeddings", json={"model": "emb", "input": ["ab", "abcd"]}).get_json()
    assert [d["embedding"] for d in reply["data"]] == [[2.0, 0.5], [4.0, 0.5]]
    assert reply["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    encoded = client.post("/v1/embeddings", json={"model": "emb", "input": "abc",
                                                  "encoding_format": "base64"}).get_json()
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (3.0, 0.5)
    assert _error(client.post("/v1/embeddings", json={"model": "emb", "input": []}), 400)
    body = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert body.status_code == 404 and body.get_json()["error"]["message"]  # OpenAI shape, with detail
    docs = ["zzz", "abc", "ab"]
    ranked = client.post("/v1/rerank", json={"model": "rr", "query": "abc", "documents": docs, "top_n": 2,
                                             "return_documents": True}).get_json()
    assert [r["index"] for r in ranked["results"]] == [1, 2]
    assert ranked["results"][0]["document"] == {"text": "abc"} and ranked["meta"]["tokens"]["input_tokens"] == 7
    plain = client.post("/v1/rerank", json={"model": "rr", "query": "abc", "documents": docs}).get_json()
    assert len(plain["results"]) == 3 and plain["results"][0]["document"] is None
    assert _error(client.post("/v1/rerank", json={"model": "rr", "query": "q", "documents": [], "top_n": 1}), 400)
    assert _error(client.post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["a"], "top_n": 0}), 400)

