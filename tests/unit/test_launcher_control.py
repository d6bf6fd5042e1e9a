"""The control server over a real ROUTER socket, the default-model choice and the gunicorn command."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from berth_server import control
from berth_server.control import ControlCall
from berth_server.control_server import ControlServer
from berth_server.errors import NotFound
from berth_server.launcher import StartupError, default_model_config, gunicorn_command
from berth_server.settings import Settings


async def _call(address: str, context: zmq.asyncio.Context, method: str, **params: Any) -> control.ControlReply:
    socket = context.socket(zmq.DEALER)
    socket.connect(address)
    await socket.send(control.encode(ControlCall(method=method, params=params)))
    reply = control.decode_reply(await asyncio.wait_for(socket.recv(), timeout=5))
    socket.close(linger=0)
    return reply


def test_control_server_dispatches_and_types_errors(tmp_path: Path) -> None:
    async def slow(params: dict[str, Any]) -> str:
        await asyncio.sleep(0.5)
        return "slow"

    async def echo(params: dict[str, Any]) -> dict[str, Any]:
        return params

    async def missing(params: dict[str, Any]) -> None:
        raise NotFound("model 'x' not found")

    async def broken(params: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    async def scenario() -> None:
        context = zmq.asyncio.Context()
        address = f"ipc://{tmp_path}/control.sock"
        server = ControlServer(address, context, {"slow": slow, "echo": echo, "missing": missing, "broken": broken})
        task = asyncio.ensure_future(server.serve())
        await asyncio.sleep(0.05)
        slow_call = asyncio.ensure_future(_call(address, context, "slow"))
        # A slow call does not hold up others: echo answers first.
        echoed = await _call(address, context, "echo", a=1)
        assert not slow_call.done()
        assert echoed.result == {"a": 1}
        assert (await slow_call).result == "slow"
        error = (await _call(address, context, "missing")).error
        assert error is not None and (error.status, error.error_type) == (404, "not_found")
        error = (await _call(address, context, "broken")).error
        assert error is not None and error.status == 500 and "bug" in error.message
        error = (await _call(address, context, "nope")).error
        assert error is not None and error.status == 404 and "nope" in error.message
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        context.term()

    asyncio.run(scenario())


def test_default_model_prefers_hf_model_id_then_sagemaker_dir(tmp_path: Path) -> None:
    config = default_model_config(Settings(hf_model_id="/weights", max_total_tokens=64))
    assert (config.source, config.uid, config.is_default, config.max_total_tokens) == ("/weights", "/weights", True, 64)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(StartupError, match=str(model_dir)):
        default_model_config(Settings(sagemaker_model_dir=model_dir))
    (model_dir / "config.json").write_text("{}")
    assert default_model_config(Settings(sagemaker_model_dir=model_dir)).source == str(model_dir)


def test_gunicorn_command_uses_gevent_and_binds_the_port() -> None:
    command = gunicorn_command(Settings(port=7001, workers=3, host="0.0.0.0"))
    assert command[command.index("--worker-class") + 1] == "gevent"
    assert command[command.index("--workers") + 1] == "3"
    assert command[command.index("--bind") + 1] == "0.0.0.0:7001"
    assert "--no-control-socket" in command
    assert command[-1] == "berth_server.http.wsgi:create_app()"
