"""The web UI: GET /ui and its static files under /ui/, served from the package (no build step, no CDN).

The page only calls the public REST API that every client uses; these routes serve files and
nothing else, so they need no API key (auth.py leaves them open). The page asks for the key.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

# Package data (pyproject's package-data): index.html, ui.css, js/*.js, the README screenshot.
UI_DIR = Path(__file__).with_name("ui")
UI_PATH = "/ui"

ui_bp = Blueprint("ui", __name__)


def is_ui_path(path: str) -> bool:
    """Whether a request path is one of the UI's static files (served without a key)."""
    return path == UI_PATH or path.startswith(UI_PATH + "/")


@ui_bp.get(UI_PATH)
def index() -> Response:
    """The one page; its links are relative ("ui/app.js", "v1/models") so a path prefix in a tunnel works."""
    response = send_from_directory(UI_DIR, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@ui_bp.get(UI_PATH + "/")
def index_slash() -> BaseResponse:
    """/ui/ would break the page's relative links: send the browser to /ui."""
    return redirect("../ui", code=308)  # relative, so it survives a proxy's path prefix


@ui_bp.get(UI_PATH + "/<path:name>")
def asset(name: str) -> Response:
    """One static file (send_from_directory refuses paths that leave UI_DIR)."""
    response = send_from_directory(UI_DIR, name)
    response.headers["Cache-Control"] = "no-cache"  # revalidate (ETag), so an upgrade is seen at once
    return response
