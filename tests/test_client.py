"""hub.client.HubClient against real hubs and a real Redis: restarts, loss, expiry, refusals."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from hub.client import HistoryLost, HubClient, HubRefused, token_expiry
from hub.config import Settings
from hub.web.app import create_app
from hub.web.server import HubRunner
from tests.support import RedisServer, free_port, publish_many, token, wait_until


class FixedPortServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> HubRunner:
        return HubRunner(self.app, **{**kwargs, "handler_cancellation": False})


async def hub_on(port: int, settings: Settings) -> TestServer:
    server = FixedPortServer(create_app(settings), port=port)
    await server.start_server()
    return server


async def collect(client: HubClient, count: int, into: list[str]) -> None:
    async for event in client:
        into.append(event.id)
        if len(into) == count:
            return


async def test_every_event_once_in_order_through_hub_and_redis_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    port = free_port()
    configured = dataclasses.replace(settings, redis_url=redis.url, heartbeat=60)
    hub = await hub_on(port, configured)
    states: list[str] = []
    received: list[str] = []
    try:
        async with HubClient(
            f"ws://127.0.0.1:{port}/ws/c", token=token("c"), on_state=lambda s, _: states.append(s)
        ) as client:
            await wait_until(lambda: client.state == "open", what="the first socket")
            published = publish_many(redis.client(), "c", list(range(10)))
            await wait_until(lambda: client._inbox.qsize() >= 10, what="the first events")

            await hub.close()  # a drain: 1001, then the hub is gone for a while
            published += publish_many(redis.client(), "c", list(range(10, 20)))
            hub = await hub_on(port, configured)

            redis.stop()
            redis.start()  # the AOF keeps everything
            published += publish_many(redis.client(), "c", list(range(20, 30)))
            await collect(client, 30, received)
            assert client.last_id == published[-1]
    finally:
        await hub.close()
        redis.stop()
    assert received == published
    assert states.count("open") >= 2


async def test_lost_history_is_never_silent(settings: Settings, own_redis: RedisServer) -> None:
    """Redis restarted empty while the hub was away: resuming, the clients are told. Without
    `on_reset` iteration raises HistoryLost once, then goes on; with it, `on_reset` gets the
    welcome."""
    port = free_port()
    configured = dataclasses.replace(settings, redis_url=own_redis.url)
    hub = await hub_on(port, configured)
    url = f"ws://127.0.0.1:{port}/ws/d"
    first = publish_many(own_redis.client(), "d", [1, 2])
    resets: list[dict[str, Any]] = []
    async with (
        HubClient(url, token=token("d")) as plain,
        HubClient(url, token=token("d"), on_reset=resets.append) as with_hook,
    ):
        for client in (plain, with_hook):
            got: list[str] = []
            await collect(client, 2, got)
            assert got == first
        await hub.close()
        own_redis.restart()  # empty: the clients' positions are gone
        later = publish_many(own_redis.client(), "d", [3])
        hub = await hub_on(port, configured)
        with pytest.raises(HistoryLost) as lost:
            await collect(plain, 1, [])
        assert lost.value.welcome["recovered"] is False
        again: list[str] = []
        await collect(plain, 1, again)
        assert again == later
        hooked: list[str] = []
        await collect(with_hook, 1, hooked)
        assert hooked == later
        assert [welcome["recovered"] for welcome in resets] == [False]
    await hub.close()


async def test_the_token_is_refreshed_before_it_expires(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    hub = await make_client(settings)
    url = str(hub.make_url("/ws/e")).replace("http", "ws", 1)
    issued: list[str] = []

    async def get_token() -> str:
        issued.append(token("e", ttl=3))
        return issued[-1]

    opens: list[str] = []
    async with HubClient(
        url, get_token=get_token, refresh_before=2, on_state=lambda s, _: opens.append(s)
    ) as client:
        await wait_until(lambda: bool(issued), what="the first token")
        first_expiry = token_expiry(issued[0])
        assert first_expiry is not None
        await wait_until(lambda: time.time() > first_expiry + 1, timeout=15, what="its expiry")
        # Past the first token's expiry, the same socket still delivers.
        [event_id] = publish_many(redis_server.client(), "e", ["still here"])
        got: list[str] = []
        await collect(client, 1, got)
        assert got == [event_id]
    assert opens.count("open") == 1


async def test_a_refusal_retrying_cannot_fix_ends_iteration(
    make_client: Any, settings: Settings
) -> None:
    hub = await make_client(settings)
    url = str(hub.make_url("/ws/f")).replace("http", "ws", 1)
    async with HubClient(url, token=token("someone-else")) as client:
        with pytest.raises(HubRefused) as refused:
            await collect(client, 1, [])
        assert (refused.value.code, refused.value.reason) == (4403, "forbidden")
        assert client.state == "failed"


async def test_publish_answers_the_event_id(make_client: Any, settings: Settings) -> None:
    hub = await make_client(settings)
    url = str(hub.make_url("/ws/g")).replace("http", "ws", 1)
    async with HubClient(url, token=token("g", ["g"])) as client:
        event_id = await client.publish("g", "Note", {"n": 1})
        got: list[str] = []
        await collect(client, 1, got)
        assert got == [event_id]


async def test_an_event_id_is_never_yielded_twice(aiohttp_server: Any) -> None:
    """Whatever a server sends again (here a server that repeats itself, and a reconnect that
    resumes from an older position), each event ID is yielded once, in order."""
    from aiohttp import web

    def frame(n: int) -> dict[str, Any]:
        return {"id": f"{n}-0", "type": "T", "payload": n}

    async def repeating(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("hub",))
        await ws.prepare(request)
        await ws.send_json({"op": "welcome", "last_id": "0-0", "epoch": "1", "recovered": True})
        for n in (1, 2, 2, 1, 3):
            await ws.send_json(frame(n))
        await ws.send_json([frame(3), frame(4)])  # a batch overlapping what came before
        await ws.close(code=1001)
        return ws

    app = web.Application()
    app.router.add_get("/ws/h", repeating)
    server = await aiohttp_server(app)
    got: list[str] = []
    async with HubClient(str(server.make_url("/ws/h")).replace("http", "ws", 1)) as client:
        await collect(client, 4, got)
    assert got == ["1-0", "2-0", "3-0", "4-0"]


async def test_a_fresh_token_refused_too_is_retried_with_backoff(
    make_client: Any, settings: Settings
) -> None:
    """After 4001/4401 the client reconnects at once with a fresh token; when that one is
    refused too, it backs off like any failure instead of hammering the hub."""
    hub = await make_client(settings)
    url = str(hub.make_url("/ws/t")).replace("http", "ws", 1)
    states: list[str] = []

    async def bad_token() -> str:
        return "junk"

    async with HubClient(
        url, get_token=bad_token, on_state=lambda state, _: states.append(state)
    ) as client:
        await wait_until(lambda: states.count("connecting") >= 3, what="three attempts")
        assert client.close_code == 4401
    assert states[:4] == ["connecting", "connecting", "waiting", "connecting"]
