"""SageMaker's bidirectional stream on the shared tiny-model server (and, under `make test-image`, in the image):
the real `websockets` client, two requests in flight on one connection, a ping, and a hang-up that aborts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from tests.integration.conftest import RunningServer
from tests.integration.hang_up import assert_hang_up_aborts

WS_PATH = "/invocations-bidirectional-stream"


def ws_url(server: RunningServer) -> str:
    return server.url(WS_PATH).replace("http://", "ws://", 1)


async def frames_until_done(ws: Any, ids: set[Any]) -> dict[Any, list[dict[str, Any]]]:
    """Every frame of the requests `ids`, each list up to its last ("done") frame."""
    frames: dict[Any, list[dict[str, Any]]] = {i: [] for i in ids}
    done: set[Any] = set()
    while done != ids:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        frames[frame["id"]].append(frame)
        if frame.get("done"):
            done.add(frame["id"])
    return frames


def test_two_requests_on_one_connection_stream_back_tagged(berth_server: RunningServer) -> None:
    import websockets

    tgi = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "do_sample": False}}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}
    over_http = httpx.post(berth_server.url("/invocations"), json=tgi, timeout=120)
    assert over_http.status_code == 200, over_http.text

    async def scenario() -> None:
        started = time.perf_counter()
        async with websockets.connect(ws_url(berth_server), max_size=None) as ws:
            assert time.perf_counter() - started < 5  # accepted at once (the contract asks 250 ms of the container)
            await ws.send(json.dumps({"id": "tgi", **tgi}))
            await ws.send(json.dumps({"id": 2, **chat}))
            await asyncio.wait_for(await ws.ping(), 10)  # answered while both run
            frames = await frames_until_done(ws, {"tgi", 2})
        assert frames["tgi"][-1] == {"id": "tgi", "done": True, "status": 200}
        assert frames[2][-1] == {"id": 2, "done": True, "status": 200}
        tgi_events = [f["event"] for f in frames["tgi"] if "event" in f]
        assert tgi_events[-1]["generated_text"] == over_http.json()[0]["generated_text"]  # greedy: the same text
        assert any(f["event"].get("choices") for f in frames[2] if "event" in f)  # OpenAI chunks for the chat

    asyncio.run(scenario())
    assert httpx.get(berth_server.url("/ping"), timeout=10).status_code == 200


def test_hanging_up_aborts_the_generation(berth_server: RunningServer) -> None:
    import websockets

    def hang_up() -> None:
        async def go() -> None:
            async with websockets.connect(ws_url(berth_server)) as ws:
                long = {"messages": [{"role": "user", "content": "Count."}], "max_tokens": 1500, "ignore_eos": True}
                await ws.send(json.dumps({"id": 1, **long}))
                while "event" not in json.loads(await ws.recv()):
                    pass  # hang up once tokens flow
        asyncio.run(go())

    assert_hang_up_aborts(berth_server, hang_up, berth_server.model_uid)
