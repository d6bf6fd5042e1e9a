"""The SDK stays light: importing berth and its CLI pulls in no server or ML framework."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("flask", "torch", "transformers", "vllm", "berth_server")


def test_sdk_imports_no_server_or_ml_modules() -> None:
    code = (
        "import sys, json, berth, berth.cli, berth.deployment, berth.sagemaker_target, berth.local_target, "
        "berth.docker_target, berth.register, berth.runtime_proxy, berth.eventstream\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_public_names() -> None:
    import berth

    assert callable(berth.deploy) and callable(berth.register_model)
    assert berth.Predictor.__name__ == "Predictor"
