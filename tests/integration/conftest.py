"""Integration fixtures: tiny models built locally, and the real `serve` process on 127.0.0.1.

`berth_server` is one server per engine for the whole session (engines from BERTH_TEST_ENGINES,
default: transformers, plus vllm when vllm is importable). `start_server` starts more, with any
env, for tests that need their own (limits, restarts, failures); they are stopped at teardown.

With BERTH_TEST_BASE_URL set (`make test-image`: the image running the tiny model), `berth_server`
is the server already listening there, and tests that start their own servers are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import building
from tests.integration.server_pool import ServerPool, make_room, note_running_test

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "serve"
# Generated models are cached here between runs (gitignored); a recipe change rebuilds them.
MODEL_CACHE = REPO / ".berth-home" / "test-models"
STARTUP_TIMEOUT_S = 180.0

# vLLM on this CPU (FINDINGS.md): 1 GiB KV cache, no core reserved, eager mode is Berth's CPU default.
# Servers run vLLM's model in its engine-core process ("uni" executor, which its CPU platform allows only
# with V1 multiprocessing off): that skips spawning a worker process that imports vLLM again, ~11 s of each
# of the suite's ~17 vLLM starts. Each test worker owns one core (tests/conftest.py), so the one torch thread
# the uni path runs is what the default path gives it here too. test_engine_vllm.py runs the default
# multiprocess executor (what users get), and the benchmarks run it against vLLM's own server.
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "BERTH_VLLM_DISTRIBUTED_EXECUTOR_BACKEND": "uni",
}


def available_engines() -> list[str]:
    """Engines the shared server fixture runs on."""
    configured = os.environ.get("BERTH_TEST_ENGINES")
    if configured:
        return [e.strip() for e in configured.split(",") if e.strip()]
    if external_base_url():
        return ["transformers"]  # one server is there; say its engine with BERTH_TEST_ENGINES
    engines = ["transformers"]
    if importlib.util.find_spec("vllm") is not None:
        engines.append("vllm")
    if importlib.util.find_spec("xllamacpp") is not None:
        engines.append("llama.cpp")
    return engines


def checkpoint_engines() -> list[str]:
    """The engines of available_engines() that serve a transformers checkpoint (safetensors folder).

    llama.cpp serves GGUF files only: its real-model and constraint coverage is in
    test_llamacpp_gguf.py, test_llamacpp_constraints.py and test_llamacpp_tools.py, on SmolLM2's own GGUF.
    """
    return [engine for engine in available_engines() if engine != "llama.cpp"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A `serve` process we started; base_url is http://127.0.0.1:PORT."""

    process: subprocess.Popen[bytes]
    port: int
    home: Path
    log_path: Path
    engine: str
    model_uid: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 40.0) -> int:
        """SIGTERM, as SageMaker does; return the exit code (kill after timeout_s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Poll /ping until 200; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerDidNotStart(f"serve ({self.engine}) exited with {self.process.returncode}:\n"
                                        f"{self.logs()[-6000:]}")
            try:
                if httpx.get(self.url("/ping"), timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerDidNotStart(f"serve ({self.engine}) did not become ready in {timeout_s:.0f} s:\n"
                                f"{self.logs()[-6000:]}")


class ServerDidNotStart(RuntimeError):
    """A server a fixture started never answered /ping; the message ends with its log's tail."""


# Which test first reported each failed server start (by the exception pytest caches for a shared fixture).
_FIRST_REPORT = pytest.StashKey[dict[int, tuple[BaseException, str]]]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Servers this test asks a pool for are not stopped to make room for others (server_pool.py)."""
    note_running_test(item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A shared server that cannot start fails every test that needs it, but shows its log only once.

    pytest re-raises a session or module fixture's cached error in each of its tests; dozens of copies
    of the same log tail would bury it, so the later ones point at the first.
    """
    outcome = yield
    if call.when != "setup" or call.excinfo is None or not call.excinfo.errisinstance(ServerDidNotStart):
        return
    reported = item.config.stash.setdefault(_FIRST_REPORT, {})
    error = call.excinfo.value
    _, first = reported.setdefault(id(error), (error, item.nodeid))
    if first != item.nodeid:
        report = outcome.get_result()  # type: ignore[attr-defined]
        report.longrepr = f"{str(error).splitlines()[0]} (the server's log is in the error of {first})"


# BERTH_TEST_BASE_URL mode: a server someone else started serves the tiny model with this env
# (tests/image/contract.py starts the image so).
EXTERNAL_SERVER_ENV = {"HF_MODEL_ID": "/opt/ml/model", "BERTH_MODEL_UID": "tiny"}


def external_base_url() -> str:
    """BERTH_TEST_BASE_URL, read when asked (tests/image/contract.py sets it after importing us)."""
    return os.environ.get("BERTH_TEST_BASE_URL", "").rstrip("/")


@dataclass
class ExternalServer:
    """The server at BERTH_TEST_BASE_URL: tests talk to it; its owner starts and stops it."""

    base_url: str
    engine: str
    model_uid: str = EXTERNAL_SERVER_ENV["BERTH_MODEL_UID"]
    env: dict[str, str] = field(default_factory=lambda: dict(EXTERNAL_SERVER_ENV))

    @property
    def port(self) -> int:
        return int(httpx.URL(self.base_url).port or 80)

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        return f"(the server at {self.base_url} was started outside the tests; see its own log)"

    def stop(self, timeout_s: float = 40.0) -> int:
        return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """BERTH_TEST_BASE_URL mode: only tests on the shared server run (others would first build their fixtures)."""
    if not external_base_url():
        return
    skip = pytest.mark.skip(reason="starts its own serve process; BERTH_TEST_BASE_URL mode only talks to the server there")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and "berth_server" not in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def launch_serve(model: str | Path | None, home: Path, *, engine: str = "transformers",
                 env: dict[str, str] | None = None, wait: bool = True) -> RunningServer:
    """Start `serve` on a free port with HF_MODEL_ID=model (None: leave it unset)."""
    if external_base_url():
        pytest.skip("starts its own serve process; BERTH_TEST_BASE_URL mode only talks to the server there")
    home.mkdir(parents=True, exist_ok=True)
    make_room(engine)  # stop kept servers this worker no longer uses when memory is short
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "HF_MODEL", "SM_VLLM_"))}
    child_env.update({
        "PORT": str(port), "BERTH_HOST": "127.0.0.1", "BERTH_HOME": str(home), "BERTH_ENGINE": engine,
        "BERTH_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
    })
    if engine == "vllm":
        child_env.update(VLLM_CPU_ENV)
    if model is not None:
        child_env["HF_MODEL_ID"] = str(model)
    child_env.update(env or {})
    log_path = home / f"serve-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, str(SERVE)], stdout=log_file, stderr=subprocess.STDOUT,
                                   env=child_env, cwd=str(home), start_new_session=True)
    server = RunningServer(process=process, port=port, home=home, log_path=log_path, engine=engine,
                           model_uid=child_env.get("BERTH_MODEL_UID") or str(model or "default"), env=child_env)
    if wait:
        server.wait_ready()
    return server


def _build(name: str) -> Path:
    from berth_server.demo_model import RECIPES, build

    with building(MODEL_CACHE / name):
        return build(RECIPES[name], MODEL_CACHE / name)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A 344k-parameter random Llama with a trained BPE tokenizer and a ChatML template."""
    return _build("tiny")


@pytest.fixture(scope="session")
def tiny_model_gguf(tiny_model: Path) -> Path:
    """tiny_model written as one float32 GGUF file (for the llama.cpp engine)."""
    from berth_server.demo_gguf import write_gguf

    with building(MODEL_CACHE / "tiny-gguf"):
        return write_gguf(tiny_model, MODEL_CACHE / "tiny-gguf" / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_reasoning_model() -> Path:
    """Like tiny_model, with a template that opens <think> unless enable_thinking is false."""
    return _build("tiny-reasoning")


@pytest.fixture(scope="session")
def tiny_embedding_model() -> Path:
    """A tiny BERT encoder for /v1/embeddings."""
    return _build("tiny-embedding")


@pytest.fixture(scope="session")
def tiny_rerank_model() -> Path:
    """A tiny BERT cross-encoder for /v1/rerank."""
    return _build("tiny-rerank")


@pytest.fixture(scope="session")
def tiny_servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    """The shared servers on the tiny model (uid "tiny"), by engine."""
    def launch(engine: str) -> RunningServer:
        # llama.cpp serves GGUF files: the same tiny model, written as one.
        model = request.getfixturevalue("tiny_model_gguf") if engine == "llama.cpp" else tiny_model
        home = tmp_path_factory.mktemp(f"berth-{engine.replace('.', '')}")
        return launch_serve(model, home, engine=engine, env={"BERTH_MODEL_UID": "tiny"})

    pool = ServerPool(launch)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session", params=available_engines())
def berth_server(request: pytest.FixtureRequest) -> RunningServer:
    """The shared server on the tiny model, once per engine (see tiny_servers)."""
    if external_base_url():
        return ExternalServer(external_base_url(), request.param)  # type: ignore[return-value]  # duck-typed
    pool: ServerPool = request.getfixturevalue("tiny_servers")
    return pool(request.param)


@pytest.fixture(scope="session")
def smollm2_servers(smollm2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """The shared SmolLM2 servers (uid "smollm2"), by engine, as `make run` starts them.

    `demo://smollm2`, no DTYPE. Every test that needs the real model and no special settings uses
    these (a new server costs a model load: on vLLM, most of a minute). On vLLM the engine is `auto`,
    as in `make run` with vllm installed; the demo checkpoint is the one already made (linked into
    the server's home), so nothing is dequantized twice.
    """
    def launch(engine: str) -> RunningServer:
        home = tmp_path_factory.mktemp(f"smollm2-{engine}")
        (home / "demo-models").mkdir()
        (home / "demo-models" / "smollm2").symlink_to(smollm2_model)
        env = {"BERTH_MODEL_UID": "smollm2"} | ({"BERTH_ENGINE": "auto"} if engine == "vllm" else {})
        return launch_serve("demo://smollm2", home, engine=engine, env=env)

    pool = ServerPool(launch)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session", params=checkpoint_engines())
def smollm2_server(request: pytest.FixtureRequest, smollm2_servers: ServerPool) -> RunningServer:
    """The shared SmolLM2 server on each checkpoint engine (see smollm2_servers)."""
    return smollm2_servers(request.param)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory for servers with their own env; every one is stopped after the test."""
    started: list[RunningServer] = []

    def start(model: str | Path | None, *, engine: str = "transformers", env: dict[str, str] | None = None,
              wait: bool = True, home: Path | None = None) -> RunningServer:
        server = launch_serve(model, home or tmp_path / f"home-{len(started)}", engine=engine, env=env, wait=wait)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
