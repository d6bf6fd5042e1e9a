"""gunicorn entry: `berth_server.frontend.wsgi:create_app()` builds the app from the environment."""

from __future__ import annotations

from flask import Flask

from berth_server.frontend import app as app_module
from berth_server.settings import Settings


def create_app() -> Flask:
    """The app for the settings the launcher put in the environment."""
    return app_module.create_app(Settings.from_env())
