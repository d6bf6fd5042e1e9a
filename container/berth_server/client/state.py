"""Per-app state: settings and collaborators, kept in app.extensions["berth"]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g

from berth_server.settings import Settings


@dataclass
class FrontendState:
    """What views and services fetch: settings, the gateway, the control client and metrics."""

    settings: Settings
    gateway: Any  # client.gateway.Gateway (or a fake in tests)
    control: Any  # client.control_client.ControlClient (or a fake)
    metrics: Any  # http.metrics.FrontendMetrics (counts tokens per model)


def get_state() -> FrontendState:
    """The current app's FrontendState, or the one this request was bound to (g.berth_state: a SageMaker
    session's, whose gateway stamps the session on every generation the request starts)."""
    bound = g.get("berth_state")
    return bound if bound is not None else current_app.extensions["berth"]
