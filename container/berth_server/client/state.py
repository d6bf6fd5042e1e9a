"""Per-app state: settings and collaborators, kept in app.extensions["berth"]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from berth_server.settings import Settings


@dataclass
class FrontendState:
    """What views and services fetch: settings, the gateway, the control client and metrics."""

    settings: Settings
    gateway: Any  # client.gateway.Gateway (or a fake in tests)
    control: Any  # client.control_client.ControlClient (or a fake)
    metrics: Any  # http.metrics.FrontendMetrics (counts tokens per model)


def get_state() -> FrontendState:
    """The current app's FrontendState."""
    return current_app.extensions["berth"]
