"""A model process on another node (a Ray replica): its ROUTER on TCP as a CURVE server admitting one client key.

The launcher's Ray actor starts the model process with BERTH_BIND_HOST (the node's address), the
replica's secret key and the frontend's public key in its environment. The ZAP handler refuses
every other client key, so a peer without the keys never gets a message through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth.asyncio

from berth_server.curve_keys import ENV_BIND_HOST, ENV_CLIENT_PUBLIC, ENV_SERVER_SECRET, public_of
from berth_server.settings import Settings

log = logging.getLogger(__name__)
ZAP_DOMAIN = "berth"


@dataclass(frozen=True)
class RemoteBinding:
    """Where and how a remote replica listens."""

    host: str
    server_secret: str
    client_public: str

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:*"  # a free port; the bound endpoint is reported in the status


def remote_binding(settings: Settings) -> RemoteBinding | None:
    """The remote binding the settings name; None for a local model process (ipc)."""
    host = settings.remote_bind_host
    if not host:
        return None
    secret, client = settings.remote_server_secret, settings.remote_client_public
    if not secret or not client:
        raise RuntimeError(f"{ENV_BIND_HOST} is set without {ENV_SERVER_SECRET} and {ENV_CLIENT_PUBLIC}: "
                           "a remote replica never listens without CURVE keys")
    return RemoteBinding(host, secret, client)


class _OneClient:
    """ZAP credentials check: only the frontend's public key gets in."""

    def __init__(self, client_public: str) -> None:
        self.allowed = client_public.encode()

    def callback(self, domain: str, key: bytes) -> bool:
        if key != self.allowed:
            log.warning("refused a connection with an unknown CURVE key")
        return key == self.allowed


def secure_router(socket: Any, context: Any, binding: RemoteBinding) -> Any:
    """Make a ROUTER a CURVE server admitting only the frontend's key (before bind); returns the authenticator."""
    authenticator = zmq.auth.asyncio.AsyncioAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_OneClient(binding.client_public))
    socket.zap_domain = ZAP_DOMAIN.encode()
    socket.curve_server = True
    socket.curve_secretkey = binding.server_secret.encode()
    socket.curve_publickey = public_of(binding.server_secret).encode()
    return authenticator
