"""schemathesis against /openapi.json on a live tiny-model server: no 5xx, replies as documented, no hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

# CI keeps this short; `make fuzz` runs the deeper search (FUZZ_EXAMPLES) and bench/RESULTS.md records it.
EXAMPLES = int(os.environ.get("BERTH_FUZZ_EXAMPLES", "5"))
MAX_TIME_S = int(os.environ.get("BERTH_FUZZ_SECONDS", "90"))
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def run_schemathesis(base_url: str, examples: int, workdir: Path, max_time_s: int,
                     api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """One schemathesis run against base_url's own OpenAPI document."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{base_url}/openapi.json",
               "--checks", CHECKS, "--max-examples", str(examples), "--request-timeout", "30",
               "--max-time", str(max_time_s), "--seed", "12", "--workers", "1", "--max-failures", "10"]
    if api_key:
        command += ["--header", f"Authorization: Bearer {api_key}"]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=max_time_s + 120,
                          check=False)


def test_openapi_document_and_schemathesis_finds_no_server_error(start_server, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    # Short generations keep every fuzzed request quick (n and max_tokens are fuzzed too).
    server = start_server(tiny_model, env={"BERTH_MODEL_UID": "tiny", "BERTH_API_KEY": "k", "MAX_TOTAL_TOKENS": "64"})
    assert httpx.get(server.url("/openapi.json"), timeout=10).status_code == 401  # not an open route
    document = httpx.get(server.url("/openapi.json"), headers={"Authorization": "Bearer k"}, timeout=10).json()
    assert document["openapi"].startswith("3.1")
    for path, method in (("/v1/chat/completions", "post"), ("/generate_stream", "post"), ("/invocations", "post"),
                         ("/v1/models/{model_uid}", "delete"), ("/v1/model_registrations/{model_type}", "post"),
                         ("/ping", "get"), ("/metrics", "get"), ("/openapi.json", "get")):
        assert method in document["paths"][path], (path, method)
    chat = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["seed"]["anyOf"][0]["maximum"] == 2**63 - 1  # the same bounds that validate requests
    result = run_schemathesis(server.base_url, EXAMPLES, tmp_path, max_time_s=MAX_TIME_S, api_key="k")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
