"""ZeroMQ CURVE keys for model processes on other machines (issue 22: replicas on a Ray cluster).

A replica on another node listens on TCP. Its socket is a CURVE server with a key pair made for it at
launch, and it admits only the frontend's client key (a ZAP check): no unauthenticated port is opened.
The frontend's client key pair is made by the launcher at start and written, readable by this user
only, under the runtime dir, where the gunicorn workers read it. Keys travel as Z85 text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import zmq

# What a remote model process reads from its environment (never from its command line, which `ps` shows).
ENV_SERVER_SECRET = "BERTH_CURVE_SERVER_SECRET"
ENV_CLIENT_PUBLIC = "BERTH_CURVE_CLIENT_PUBLIC"
ENV_BIND_HOST = "BERTH_BIND_HOST"
CLIENT_KEY_FILE = "curve-client.json"


class CurveClient(msgspec.Struct, frozen=True):
    """What a DEALER needs to reach one remote replica: that replica's public key and our key pair."""

    server_public: str
    public: str
    secret: str


def keypair() -> tuple[str, str]:
    """A fresh (public, secret) CURVE key pair, Z85 text."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def public_of(secret: str) -> str:
    """The public key that belongs to a secret key."""
    return zmq.curve_public(secret.encode()).decode()


def write_client_keys(runtime_dir: Path) -> tuple[str, str]:
    """Make the frontend's key pair and write it under runtime_dir (mode 0600); return (public, secret)."""
    public, secret = keypair()
    path = runtime_dir / CLIENT_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"public": public, "secret": secret}, file)
    return public, secret


def read_client_keys(runtime_dir: Path) -> tuple[str, str] | None:
    """The frontend's (public, secret) key pair, or None where the launcher made none (no remote replicas)."""
    try:
        keys = json.loads((runtime_dir / CLIENT_KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return str(keys["public"]), str(keys["secret"])


def secure_client(socket: zmq.Socket, keys: CurveClient) -> None:
    """Make a DEALER a CURVE client of one remote replica (before connect)."""
    socket.curve_serverkey = keys.server_public.encode()
    socket.curve_publickey = keys.public.encode()
    socket.curve_secretkey = keys.secret.encode()
