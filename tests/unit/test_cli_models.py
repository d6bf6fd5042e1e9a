"""`berth` model commands: options, and errors as one line with a non-zero exit (no traceback)."""

from __future__ import annotations

import socket
from pathlib import Path

from berth.cli import main
from berth.cli_models import MODEL_COMMANDS
from click.testing import CliRunner


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_commands_are_attached_with_endpoint_defaults() -> None:
    names = {command.name for command in MODEL_COMMANDS}
    assert names == {"registrations", "register", "unregister", "launch", "list", "terminate", "generate", "chat"}
    for name in names:
        help_text = CliRunner().invoke(main, [name, "--help"]).output
        assert "--endpoint" in help_text and "http://127.0.0.1:8080" in help_text and "--api-key" in help_text


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(main, ["registrations", "--endpoint", endpoint])
    assert result.exit_code == 1 and "cannot reach Berth" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["register", "--file", str(tmp_path / "none.json")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["registrations", "--model-type", "video"])
    assert result.exit_code == 2 and "video" in result.output
    result = CliRunner().invoke(main, ["launch"])
    assert result.exit_code == 2 and "--model-name" in result.output
