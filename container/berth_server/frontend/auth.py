"""Optional API-key check: with BERTH_API_KEY set, every route but health and metrics needs the key."""

from __future__ import annotations

import hmac

from flask import Flask, request

from berth_server.errors import Unauthorized

# xinference-client asks /v1/cluster/auth without a key to learn whether it must send one.
OPEN_PATHS = frozenset({"/ping", "/health", "/metrics", "/v1/cluster/auth"})


def presented_key() -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-Api-Key`."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-Api-Key")


def install_auth(app: Flask, api_key: str | None) -> None:
    """Reject requests without the right key (401) when api_key is set."""
    if not api_key:
        return
    expected = api_key.encode()

    @app.before_request
    def _require_key() -> None:
        if request.path in OPEN_PATHS:
            return
        key = presented_key()
        if key is None or not hmac.compare_digest(key.encode(), expected):
            raise Unauthorized("missing or invalid API key")
