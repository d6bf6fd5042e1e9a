"""The frontend's client for the launcher's control RPC (status, launch, terminate, registrations).

A fresh zmq.green DEALER per call keeps concurrent calls from different greenlets apart and gives
each call its own deadline; control calls are rare (status is cached by the gateway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq.green as zmq

from berth_server import control, ipc
from berth_server.errors import NotReady, from_record


class ControlClient:
    """Calls launcher methods; errors come back as the typed BerthError the launcher raised."""

    def __init__(self, runtime_dir: Path, timeout_s: float = 10.0) -> None:
        self.address = ipc.control_socket_address(runtime_dir)
        self.timeout_s = timeout_s
        self._pid = -1
        self._context: zmq.Context | None = None

    def _ctx(self) -> zmq.Context:
        """A context made in this process (contexts do not survive fork)."""
        if self._pid != os.getpid() or self._context is None:
            self._pid = os.getpid()
            self._context = zmq.Context()
        return self._context

    def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any:
        """Call a launcher method and return its result; NotReady if the launcher does not answer in time."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        socket = self._ctx().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.address)
            socket.send(control.encode(control.ControlCall(method=method, params=params)))
            if not socket.poll(int(timeout * 1000), zmq.POLLIN):
                raise NotReady(f"the launcher did not answer '{method}' within {timeout:.0f} s")
            frames = socket.recv_multipart()
        finally:
            socket.close(0)
        # Tolerate an empty delimiter frame in case the launcher answers REQ-style.
        reply = control.decode_reply(frames[-1])
        if reply.error is not None:
            raise from_record(reply.error)
        return reply.result
