"""Start/stop helpers for the servers benchmarked side by side: Berth, Xinference 4.1.0, vLLM's own server."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
MAIN_PY = REPO / ".venv" / "bin" / "python"
XINF_VENV = REPO / "bench" / ".venv-xinference"
XINF_CONSTRAINTS = REPO / "bench" / "xinference-constraints.txt"
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class PeerFailed(RuntimeError):
    """A peer did not start, register or become ready within its bound."""


@dataclasses.dataclass
class Peer:
    """A running server: where to send requests, and the process group to stop."""

    name: str
    base_url: str
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_s: float = 0.0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the peer's process group (we started it in its own session), SIGKILL if it lingers."""
        _stop_group(self.proc, timeout_s)


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _spawn(name: str, argv: list[str], env: dict[str, str], cwd: Path = REPO) -> tuple[subprocess.Popen[bytes], Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log_path


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log_path: Path) -> float:
    """Poll url until 200; return seconds waited. Raise PeerFailed if the process dies or time runs out."""
    start = time.perf_counter()
    deadline = start + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise PeerFailed(f"process exited ({proc.returncode}) before {url} answered:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise PeerFailed(f"{url} not ready within {timeout_s:.0f}s:\n{_tail(log_path)}")


def first_model_id(base_url: str) -> str:
    """The first id listed by GET /v1/models."""
    data = httpx.get(f"{base_url}/v1/models", timeout=10.0).json()
    items = data.get("data") if isinstance(data, dict) else data
    if not items:
        raise PeerFailed(f"{base_url}/v1/models lists no model: {str(data)[:200]}")
    return str(items[0]["id"])


# --- Berth ---------------------------------------------------------------------------------

def start_berth(model_dir: Path, port: int, engine: str, timeout_s: float = 300.0,
                extra_env: dict[str, str] | None = None) -> Peer:
    """Run ./serve with HF_MODEL_ID=model_dir; ready when /ping answers 200 (ready_s = serve->ping)."""
    serve = REPO / "serve"
    if not serve.exists():
        raise PeerFailed(f"{serve} does not exist yet")
    env = dict(os.environ)
    env.update({"HF_MODEL_ID": str(model_dir), "PORT": str(port), "BERTH_HOST": "127.0.0.1",
                "BERTH_ENGINE": engine, "BERTH_HOME": str(OUT / "berth-home"),
                "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"})
    if engine == "vllm":
        env.update({k: env.get(k, v) for k, v in VLLM_CPU_ENV.items()})
    env.update(extra_env or {})
    proc, log_path = _spawn(f"berth-{engine}-{port}", [str(serve)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_http_ok(f"{base}/ping", proc, timeout_s, log_path)
        model = first_model_id(base)
    except BaseException:
        _stop_group(proc, 20)
        raise
    return Peer(f"berth-{engine}", base, model, proc, log_path, ready_s=ready)


def gunicorn_worker_rss_mb(peer: Peer) -> list[float]:
    """RSS (MB) of each gunicorn worker: the children of the gunicorn master under the serve process."""
    root = psutil.Process(peer.proc.pid)
    procs = [root, *root.children(recursive=True)]
    masters = []
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
            parent = p.parent()
            parent_cmd = " ".join(parent.cmdline()) if parent else ""
        except psutil.Error:
            continue
        if "gunicorn" in cmd and "gunicorn" not in parent_cmd:
            masters.append(p)
    rss: list[float] = []
    for master in masters:
        for child in master.children():
            try:
                rss.append(round(child.memory_info().rss / 2**20, 1))
            except psutil.Error:
                pass
    return rss


# --- Xinference ----------------------------------------------------------------------------

def xinference_installed() -> bool:
    """Whether bench/.venv-xinference has xinference-local."""
    return (XINF_VENV / "bin" / "xinference-local").exists()


def install_xinference() -> None:
    """Create bench/.venv-xinference with xinference==4.1.0 (torch pinned to CPU) and xllamacpp, then drop torchvision."""
    if not (XINF_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(XINF_VENV)], check=True)
    pip = [str(XINF_VENV / "bin" / "python"), "-m", "pip"]
    # xllamacpp at Berth's own version: Xinference's llama.cpp engine is built on it (bench/llamacpp_bench.py).
    xllamacpp = f"xllamacpp=={importlib.metadata.version('xllamacpp')}"
    subprocess.run([*pip, "install", "-c", str(XINF_CONSTRAINTS), "xinference==4.1.0", xllamacpp], check=True,
                   timeout=1800)
    # The torchvision it pulls is a CUDA build that fails to import against torch+cpu.
    subprocess.run([*pip, "uninstall", "-y", "torchvision"], check=False)


def xinference_registration(model_dir: Path, name: str = "berth-bench") -> dict[str, Any]:
    """Xinference v2 custom-LLM JSON for a local Llama directory (chat template from the directory)."""
    tpl_file = model_dir / "chat_template.jinja"
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = tpl_file.read_text() if tpl_file.exists() else tok_cfg.get("chat_template")
    gen_cfg = json.loads((model_dir / "generation_config.json").read_text())
    eos = gen_cfg.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else None
    return {
        "version": 2, "context_length": 2048, "model_name": name, "model_lang": ["en"],
        "model_ability": ["generate", "chat"], "model_description": "Berth bench model (random weights)",
        "model_family": name,
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": "0_1", "quantization": "none",
                         "model_id": None, "model_hub": "huggingface", "model_uri": f"file://{model_dir}",
                         "model_revision": None, "activated_size_in_billions": None}],
        "chat_template": template, "stop_token_ids": eos_ids,
        "stop": [tok_cfg["eos_token"]] if isinstance(tok_cfg.get("eos_token"), str) else None,
        "reasoning_start_tag": None, "reasoning_end_tag": None, "cache_config": None,
        "virtualenv": {"packages": []}, "is_builtin": False,
    }


def _xinference_local(port: int, timeout_s: float) -> tuple[subprocess.Popen[bytes], Path, str]:
    """xinference-local from bench/.venv-xinference on 127.0.0.1:port, answering /v1/models."""
    if not xinference_installed():
        raise PeerFailed(f"{XINF_VENV} has no xinference-local (install_xinference() or see RESULTS.md)")
    env = dict(os.environ)
    env.update({"XINFERENCE_AUTH_ADVANCED": "0", "XINFERENCE_HOME": str(OUT / "xinference-home"),
                "PATH": f"{XINF_VENV / 'bin'}:{env.get('PATH', '')}"})
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)  # its own venv, not this checkout's sources
    argv = [str(XINF_VENV / "bin" / "xinference-local"), "--host", "127.0.0.1", "--port", str(port)]
    proc, log_path = _spawn(f"xinference-{port}", argv, env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/v1/models", proc, timeout_s, log_path)
    except BaseException:
        _stop_group(proc, 30)
        raise
    return proc, log_path, base


def _register_and_launch(base: str, registration: dict[str, Any], launch: dict[str, Any], timeout_s: float) -> None:
    """Register a custom LLM in Xinference and launch it (uid = its name); PeerFailed with Xinference's words."""
    r = httpx.post(f"{base}/v1/model_registrations/LLM", json={"model": json.dumps(registration), "persist": False},
                   timeout=60.0)
    if r.status_code != 200:
        raise PeerFailed(f"xinference register: HTTP {r.status_code} {r.text[:300]}")
    name = registration["model_name"]
    r = httpx.post(f"{base}/v1/models", timeout=max(10.0, timeout_s), json={
        "model_uid": name, "model_name": name, "model_type": "LLM", "n_gpu": None,
        # Its per-model virtualenv would try to install packages; the peer venv has what it needs.
        "enable_virtual_env": False, **launch})
    if r.status_code != 200:
        raise PeerFailed(f"xinference launch: HTTP {r.status_code} {r.text[:300]}")


def start_xinference(model_dir: Path, port: int, timeout_s: float = 600.0) -> Peer:
    """xinference-local on 127.0.0.1:port, register model_dir as a custom LLM, launch it on Transformers."""
    start = time.perf_counter()
    proc, log_path, base = _xinference_local(port, timeout_s)
    reg = xinference_registration(model_dir)
    try:
        _register_and_launch(base, reg, {"model_engine": "Transformers", "model_format": "pytorch",
                                         "model_size_in_billions": "0_1", "quantization": "none"},
                             timeout_s - (time.perf_counter() - start))
    except BaseException:
        _stop_group(proc, 30)
        raise
    return Peer("xinference", base, reg["model_name"], proc, log_path, ready_s=time.perf_counter() - start)


def gguf_chat_template(gguf: Path) -> str:
    """The chat template a GGUF file carries in its metadata (tokenizer.chat_template)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


def start_xinference_llamacpp(gguf: Path, port: int, slots: int, context: int, threads: int,
                              timeout_s: float = 600.0) -> Peer:
    """xinference-local with the GGUF file registered as a custom ggufv2 LLM, launched on its llama.cpp engine
    (xllamacpp, as Xinference 4.1 runs it) with the same slots, per-slot context and threads as the others."""
    start = time.perf_counter()
    proc, log_path, base = _xinference_local(port, timeout_s)
    name = "smollm2-gguf-bench"
    registration = {
        "version": 2, "context_length": context, "model_name": name, "model_lang": ["en"],
        "model_ability": ["generate", "chat"], "model_description": "SmolLM2-135M-Instruct Q4_1 (bench)",
        "model_family": name,
        "model_specs": [{"model_format": "ggufv2", "model_size_in_billions": "0_135", "quantization": "Q4_1",
                         "model_id": None, "model_hub": "huggingface", "model_uri": str(gguf.parent),
                         "model_file_name_template": gguf.name.replace("Q4_1", "{quantization}"),
                         "model_revision": None}],
        "chat_template": gguf_chat_template(gguf), "stop_token_ids": [2], "stop": ["<|im_end|>"],
    }
    try:
        _register_and_launch(base, registration, {
            "model_engine": "llama.cpp", "model_format": "ggufv2", "model_size_in_billions": "0_135",
            "quantization": "Q4_1",
            # llama.cpp's own settings, which Xinference passes through to xllamacpp's CommonParams.
            "n_parallel": slots, "n_ctx": slots * context, "n_threads": threads}, timeout_s - (time.perf_counter() - start))
    except BaseException:
        _stop_group(proc, 30)
        raise
    return Peer("xinference-llama.cpp", base, name, proc, log_path, ready_s=time.perf_counter() - start)


# --- vLLM's own OpenAI server -----------------------------------------------------------------

def start_vllm_server(model_dir: Path, port: int, timeout_s: float = 300.0, name: str = "bench",
                      extra: tuple[str, ...] = ()) -> Peer:
    """vLLM's own OpenAI server via bench/vllm_peer.py (same CPU env as Berth's vLLM engine), eager mode;
    `extra` are more server arguments (LoRA modules, say).

    Falls back to running the api_server module directly when bench/vllm_peer.py is absent.
    """
    env = dict(os.environ)
    for key, value in VLLM_CPU_ENV.items():
        env.setdefault(key, value)
    peer_script = REPO / "bench" / "vllm_peer.py"
    if peer_script.exists():
        argv = [str(MAIN_PY), str(peer_script), "--model", str(model_dir), "--port", str(port), "--name", name,
                "--", *extra]
    else:
        argv = [str(MAIN_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", *extra]
    proc, log_path = _spawn(f"vllm-server-{port}", argv, env)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_http_ok(f"{base}/v1/models", proc, timeout_s, log_path)
    except BaseException:
        _stop_group(proc, 30)
        raise
    return Peer("vllm-server", base, name, proc, log_path, ready_s=ready)
