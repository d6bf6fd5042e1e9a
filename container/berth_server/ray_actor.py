"""The Ray actor that runs one replica's model process on its node (issue 22). Imported only under Ray.

The actor starts `python -m berth_server.model_process` on its node with a node-local runtime dir,
relays the model process's status messages to the launcher (next_status), and stops it on request.
The model process dies with the actor (PR_SET_PDEATHSIG): a killed actor or a lost node leaves no
model process behind. Every node needs berth[server,ray] (and the engine) installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import zmq

from berth_server.curve_keys import ENV_BIND_HOST
from berth_server.process_tree import ENV_PARENT
from berth_server.settings import inherited_environment

_POLL_MS = 200


class ReplicaActor:
    """One replica: its model process and the socket its statuses arrive on."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._context = zmq.Context()
        self._status: zmq.Socket | None = None

    def start(self, config_json: str, env: dict[str, str]) -> dict[str, Any]:
        """Start the model process; return where it runs ({"node", "host", "pid"})."""
        import ray

        self._dir = tempfile.mkdtemp(prefix="berth-replica-")
        self._status = self._context.socket(zmq.PULL)
        self._status.bind(f"ipc://{self._dir}/status.sock")
        host = ray.util.get_node_ip_address()
        child_env = inherited_environment()  # Ray's own (CUDA_VISIBLE_DEVICES for the GPUs it gave this actor)
        child_env.update(env)
        # The actor is threaded, so no preexec_fn: the model process arms PR_SET_PDEATHSIG itself.
        child_env.update({"BERTH_RUNTIME_DIR": self._dir, ENV_BIND_HOST: host, ENV_PARENT: str(os.getpid())})
        self._process = subprocess.Popen(
            [sys.executable, "-m", "berth_server.model_process", "--config-json", config_json], env=child_env,
            start_new_session=True)
        return {"node": ray.get_runtime_context().get_node_id(), "host": host, "pid": self._process.pid}

    def next_status(self) -> bytes | None:
        """The next status frame from the model process; None once it has exited (and said everything)."""
        assert self._status is not None and self._process is not None
        while True:
            if self._status.poll(_POLL_MS):
                return self._status.recv()
            if self._process.poll() is not None:
                return self._status.recv() if self._status.poll(_POLL_MS) else None

    def exit_code(self) -> int | None:
        """The model process's exit code (None while it runs)."""
        return None if self._process is None else self._process.poll()

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after grace_s; remove the runtime dir; return the exit code."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        return None if process is None else process.returncode
