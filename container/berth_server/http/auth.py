"""Optional API-key check: with BERTH_API_KEY set, every route needs the key but health, public metrics and /ui."""

from __future__ import annotations

import hmac

from flask import Flask, request

from berth_server.errors import Unauthorized
from berth_server.http.webui import is_ui_path

# SageMaker and load balancers probe health without a key; xinference-client asks /v1/cluster/auth
# without one to learn whether it must send one. /metrics joins them only with BERTH_METRICS_PUBLIC.
OPEN_PATHS = frozenset({"/ping", "/health", "/v1/cluster/auth"})
METRICS_PATH = "/metrics"


def presented_key() -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-Api-Key`."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-Api-Key")


def install_auth(app: Flask, api_key: str | None, metrics_public: bool = False) -> None:
    """Reject requests without the right key (401) when api_key is set; the comparison is constant-time."""
    if not api_key:
        return
    expected = api_key.encode()
    open_paths = OPEN_PATHS | {METRICS_PATH} if metrics_public else OPEN_PATHS

    @app.before_request
    def _require_key() -> None:
        # The UI's static files carry no data; the page itself sends the key on every API call.
        if request.path in open_paths or is_ui_path(request.path):
            return
        key = presented_key()
        # compare_digest on bytes of any length: the time taken does not tell how much of the key matched.
        if key is None or not hmac.compare_digest(key.encode(), expected):
            raise Unauthorized("missing or invalid API key")
