"""The whole engine against a model: Hypothesis drives a real hub (Session, Reader, Notifier)
on a real Redis through sequences of publishes, connects, disconnects, resumes and Redis
restarts; every client's events must be its account's published ones, in order, once.

Hypothesis rules run synchronously; the hub and its clients live on an event loop in a thread
of their own, and each rule hands it a coroutine and waits for the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from hub.config import Settings
from hub.web.app import create_app
from hub.web.server import HubRunner
from tests.support import RedisServer, bearer, free_port, wait_for, wait_until

T = TypeVar("T")
EXAMPLES = itertools.count()


class Loop:
    """An event loop in a thread: `run` waits for a coroutine's result from outside it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what still runs, let transports finish closing, then stop."""

        async def settle() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclasses.dataclass
class World:
    """What every example shares: the loop, Redis, one hub and an HTTP session."""

    loop: Loop
    redis: RedisServer
    url: str
    session: aiohttp.ClientSession


@dataclasses.dataclass
class Client:
    account: str
    seen: list[str | None]  # None: the hub said history was lost
    socket: aiohttp.ClientWebSocketResponse | None = None
    task: asyncio.Task[None] | None = None
    epoch: str | None = None  # of its last connection, to resume with


class Engine(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        example = next(EXAMPLES)
        self.accounts = [f"m{example}-{n}" for n in range(3)]
        self.published: dict[str, list[str]] = {a: [] for a in self.accounts}
        self.keys = itertools.count()
        self.everyone: list[Client] = []

    clients = Bundle("clients")
    away = Bundle("away")

    # --- rules --------------------------------------------------------------------------

    @rule(n=st.integers(0, 2))
    def publish(self, n: int) -> None:
        account = self.accounts[n]
        event_id = self.world.loop.run(self._publish(account, f"k{next(self.keys)}"))
        self.published[account].append(event_id)

    @rule(target=clients, n=st.integers(0, 2))
    def connect(self, n: int) -> Client:
        client = Client(self.accounts[n], [])
        self.everyone.append(client)
        self.world.loop.run(self._open(client, None, None))
        return client

    @rule(target=away, client=consumes(clients))
    def disconnect(self, client: Client) -> Client:
        self.world.loop.run(self._close(client))
        return client

    @rule(target=clients, client=consumes(away))
    def resume(self, client: Client) -> Client:
        last_id = next((e for e in reversed(client.seen) if e is not None), None)
        self.world.loop.run(self._open(client, last_id, client.epoch))
        return client

    @rule()
    def restart_redis(self) -> None:
        """Stopped and started with its append-only file: nothing acknowledged is lost."""
        self.world.redis.stop()
        self.world.redis.start()

    # --- the model ----------------------------------------------------------------------

    @invariant()
    def every_client_got_a_prefix_of_its_account_s_events(self) -> None:
        for client in self._all():
            assert client.seen == self.published[client.account][: len(client.seen)], client

    def teardown(self) -> None:
        """At the end, every connected client catches up on everything published."""
        try:
            connected = [c for c in self._all() if c.socket is not None]
            with contextlib.suppress(AssertionError):  # the comparison below says what differs
                wait_for(
                    lambda: all(c.seen == self.published[c.account] for c in connected),
                    timeout=20,
                )
            for client in connected:
                assert client.seen == self.published[client.account], client
        finally:
            for client in self._all():
                if client.socket is not None:
                    self.world.loop.run(self._close(client))

    # --- on the loop --------------------------------------------------------------------

    async def _publish(self, account: str, key: str) -> str:
        headers = {**bearer("model", "*"), "Idempotency-Key": key}
        for _ in range(200):  # Redis may be starting again: the same key until acknowledged
            async with self.world.session.post(
                f"{self.world.url}/accounts/{account}/events",
                json={"type": "M", "payload": key},
                headers=headers,
            ) as response:
                if response.status in (200, 201):
                    return str((await response.json())["id"])
                assert response.status in (503, 504), await response.text()
            await wait_until(self._ready, what="the hub ready again")
        raise AssertionError(f"{account}: the publish was never acknowledged")

    async def _ready(self) -> bool:
        async with self.world.session.get(f"{self.world.url}/readyz") as response:
            return response.status == 200

    async def _open(self, client: Client, last_id: str | None, epoch: str | None) -> None:
        """A raw socket, resumed by hand: what the hub sends, not what a client library
        would make of it (the Python client drops an ID it already yielded)."""
        query = "" if last_id is None else f"?last_id={last_id}&epoch={epoch}"
        ws = await self.world.session.ws_connect(
            f"{self.world.url}/ws/{client.account}{query}", headers=bearer(client.account)
        )
        welcome = await ws.receive_json(timeout=10)
        assert welcome["op"] == "welcome", welcome
        if not welcome["recovered"]:
            client.seen.append(None)
        client.epoch = welcome["epoch"]
        client.socket = ws
        client.task = asyncio.create_task(self._collect(client, ws))

    async def _collect(self, client: Client, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                frame = orjson.loads(message.data)
                events = frame if isinstance(frame, list) else [frame]
                client.seen.extend(e["id"] for e in events if "op" not in e)

    async def _close(self, client: Client) -> None:
        assert client.socket is not None
        await client.socket.close()
        if client.task is not None:
            await client.task
        client.socket = client.task = None

    def _all(self) -> list[Client]:
        return self.everyone


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    loop = Loop()
    port = free_port()
    configured = Settings(redis_url=redis.url, secret=None, heartbeat=60.0)

    async def start() -> tuple[web.AppRunner, aiohttp.ClientSession]:
        from tests.support import SECRET

        app = create_app(dataclasses.replace(configured, secret=SECRET, block_ms=500))
        runner = HubRunner(app, handler_cancellation=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, aiohttp.ClientSession()

    runner, session = loop.run(start())
    try:
        yield World(loop, redis, f"http://127.0.0.1:{port}", session)
    finally:

        async def stop() -> None:
            await session.close()
            await runner.cleanup()

        loop.run(stop())
        loop.close()
        redis.stop()


def test_every_client_gets_its_account_s_events_in_order_once(world: World) -> None:
    Engine.world = world
    run_state_machine_as_test(
        Engine,
        settings=settings(
            max_examples=12,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
