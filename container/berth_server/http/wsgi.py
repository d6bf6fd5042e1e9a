"""gunicorn entry: `berth_server.http.wsgi:create_app()` builds the app from the environment."""

from __future__ import annotations

import logging
import sys

from flask import Flask

from berth_server.http import app as app_module
from berth_server.settings import Settings


def create_app() -> Flask:
    """The app for the settings the launcher put in the environment, logging like the launcher does."""
    settings = Settings.from_env()
    # Without a handler, frontend warnings (failed streams, 5xx) would only reach Python's bare last resort.
    logging.basicConfig(level=getattr(logging, settings.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [frontend %(process)d] %(name)s: %(message)s")
    return app_module.create_app(settings)
