"""The launcher's control ROUTER: dispatches ControlCalls to async handlers, one task per call.

A call that blocks (launch with wait_ready) never holds up the others. Handlers raise typed
BerthErrors; they travel back as ControlReply.error with status and error_type, and anything else
becomes a 500 whose message is logged here, not shown as a traceback to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from berth_server import control
from berth_server.control import ControlReply
from berth_server.errors import BerthError, GenerationFailed, InvalidRequest, NotFound, record_of
from berth_server.launch_config import ModelLaunchConfig
from berth_server.supervisor import Supervisor

log = logging.getLogger("berth.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def supervisor_handlers(supervisor: Supervisor) -> dict[str, Handler]:
    """The launcher's own methods: status, launch_config, terminate, ping."""

    async def status(params: dict[str, Any]) -> dict[str, Any]:
        return {uid: msgspec.to_builtins(s) for uid, s in supervisor.statuses().items()}

    async def launch_config(params: dict[str, Any]) -> dict[str, Any]:
        try:
            config = msgspec.convert(params["config"], ModelLaunchConfig)
        except (KeyError, msgspec.ValidationError) as exc:
            from berth_server.errors import InvalidRequest

            raise InvalidRequest(f"invalid launch config: {exc}") from None
        await supervisor.launch(config, bool(params.get("wait_ready", True)))
        return {"model_uid": config.uid}

    async def terminate(params: dict[str, Any]) -> dict[str, Any]:
        uid = str(params.get("uid", ""))
        if uid == supervisor.settings.default_model_uid:
            from berth_server.errors import InvalidRequest

            raise InvalidRequest(f"{uid!r} is the default model; it stops with the server")
        await supervisor.terminate(uid)
        return {"model_uid": uid}

    async def ping(params: dict[str, Any]) -> str:
        return "pong"

    return {"status": status, "launch_config": launch_config, "terminate": terminate, "ping": ping}


class ControlServer:
    """Serves the control RPC on a ROUTER socket until cancelled."""

    def __init__(self, address: str, context: zmq.asyncio.Context, handlers: dict[str, Handler]):
        self._address = address
        self._context = context
        self._handlers = handlers
        self._socket: zmq.asyncio.Socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Bind and answer calls forever."""
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.bind(self._address)
        try:
            while True:
                frames = await self._socket.recv_multipart()
                # DEALER peers send [identity, payload]; REQ peers add an empty delimiter frame.
                identity, envelope, payload = frames[0], frames[1:-1], frames[-1]
                task = asyncio.ensure_future(self._answer(identity, envelope, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._socket.close(linger=0)

    async def _answer(self, identity: bytes, envelope: list[bytes], payload: bytes) -> None:
        reply = await self._dispatch(payload)
        assert self._socket is not None
        try:
            await self._socket.send_multipart([identity, *envelope, control.encode(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the caller went away (timeout, worker restart)
            log.info("control reply dropped: %s", exc)

    async def _dispatch(self, payload: bytes) -> ControlReply:
        try:
            call = control.decode_call(payload)
        except msgspec.DecodeError as exc:
            return ControlReply(error=record_of(InvalidRequest(f"malformed control call: {exc}")))
        handler = self._handlers.get(call.method)
        if handler is None:
            return ControlReply(error=record_of(NotFound(f"unknown control method {call.method!r}")))
        try:
            return ControlReply(result=await handler(call.params))
        except BerthError as exc:
            return ControlReply(error=record_of(exc))
        except Exception as exc:  # a bug: keep serving, log the traceback, tell the caller it was ours
            log.exception("control method %s failed", call.method)
            return ControlReply(error=record_of(GenerationFailed(f"internal error in {call.method}: {exc}")))
