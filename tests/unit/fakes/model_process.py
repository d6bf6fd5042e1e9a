"""A fake model process: reports statuses like the real one, then behaves as FAKE_BEHAVIOUR says.

Behaviours: "ready" (serve until SIGTERM), "fail" (report failed and exit 3),
"crash" (report ready, then exit 9 after a moment).
"""

import json
import os
import signal
import sys
import time

import zmq
from berth_server import control
from berth_server.launch_config import ModelDescription, ModelStatus


def main() -> int:
    config = json.loads(sys.argv[sys.argv.index("--config-json") + 1])
    uid = config["uid"]
    behaviour = config["engine_args"].get("fake_behaviour", "ready")
    socket = zmq.Context().socket(zmq.PUSH)
    socket.connect(f"ipc://{os.environ['BERTH_RUNTIME_DIR']}/status.sock")

    def push(state: str, **fields: object) -> None:
        socket.send(control.encode(ModelStatus(uid=uid, state=state, replica=config.get("replica_index", 0),
                                               **fields)))  # type: ignore[arg-type]

    push("loading", progress=0.5)
    if behaviour == "fail":
        push("failed", reason=f"model weights not found at {config['source']!r}", error_type="validation")
        time.sleep(0.1)
        return 3
    description = ModelDescription(uid=uid, model_name=config["model_name"], model_type="LLM",
                                   source=config["source"], engine="fake", device="cpu", dtype="float32",
                                   abilities=["chat"], max_input_tokens=10, max_total_tokens=20,
                                   context_length=20, max_batch_size=1, pid=os.getpid())
    push("ready", progress=1.0, description=description)
    if behaviour == "crash":
        time.sleep(0.3)
        return 9
    signal.sigwait({signal.SIGTERM})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    sys.exit(main())
