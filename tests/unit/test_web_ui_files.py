"""The web UI's files: served at /ui from the package, open without a key, self-contained, all in package data."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from berth_server.http.webui import UI_DIR

from tests.unit.test_frontend_app import make_app

REPO = Path(__file__).resolve().parents[2]
UI_FILES = sorted(p for p in UI_DIR.rglob("*") if p.is_file())
TEXT_FILES = [p for p in UI_FILES if p.suffix in (".html", ".css", ".js")]


def test_page_and_assets_are_served(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    page = client.get("/ui")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<script type="module" src="ui/js/app.js">' in page.text and page.headers["Cache-Control"] == "no-cache"
    script = client.get("/ui/js/app.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
    assert client.get("/ui/ui.css").mimetype == "text/css"
    slash = client.get("/ui/")
    assert slash.status_code == 308 and slash.headers["Location"] == "../ui"  # relative: survives a path prefix
    assert client.get("/ui/nothing.js").status_code == 404
    assert client.get("/ui/%2e%2e/webui.py").status_code == 404
    assert client.get("/ui/..%2fwebui.py").status_code == 404


def test_ui_files_need_no_key_but_the_api_does(tmp_path: Path) -> None:
    client = make_app(tmp_path, api_key="sekret").test_client()
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/js/api.js").status_code == 200
    assert client.get("/ui/").status_code == 308
    assert client.get("/v1/models").status_code == 401
    assert client.get("/uix").status_code == 401  # only /ui and what is under it


def test_every_file_is_package_data() -> None:
    line = re.search(r'^"berth_server\.http" = (\[.*\])$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert line, "pyproject.toml has no package-data for berth_server.http"
    globs = json.loads(line.group(1))
    for path in UI_FILES:
        relative = path.relative_to(UI_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), f"{relative} is not in package-data"


def test_no_network_but_the_servers_own() -> None:
    # Users run Berth offline: no CDN, no web font, no absolute URL anywhere.
    for path in TEXT_FILES:
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), path.name
        assert "@import" not in text, path.name


def test_every_module_is_imported_and_every_import_exists() -> None:
    scripts = {p.name: p.read_text() for p in (UI_DIR / "js").glob("*.js")}
    imported = {"app.js"}
    for name, text in scripts.items():
        for target in re.findall(r'from "\./([\w-]+\.js)"', text):
            assert target in scripts, f"{name} imports a missing {target}"
            imported.add(target)
    assert imported == set(scripts)


def test_ids_the_scripts_use_are_in_the_page() -> None:
    html = (UI_DIR / "index.html").read_text()
    ids = set(re.findall(r'\bid="([\w-]+)"', html))
    for path in (UI_DIR / "js").glob("*.js"):
        for wanted in re.findall(r'getElementById\("([\w-]+)"\)', path.read_text()):
            assert wanted in ids, f"{path.name} wants #{wanted}"
