"""`hub serve --workers 2`: one port served by two processes, a worker killed and restarted
with nothing lost, a drain of both, and metrics that add up across them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.client import HubClient
from tests.support import SECRET, HubProcess, alive, bearer, free_port, token, wait_until


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[HubProcess]:
    """A supervisor of two workers on the embedded Redis, with tokens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    env |= {
        "HUB_PORT": str(free_port()),
        "HUB_DATA_DIR": str(tmp_path / "data"),
        "HUB_SECRET": SECRET,
        "HUB_WORKERS": "2",
    }
    hub = await asyncio.to_thread(HubProcess, env, tmp_path)
    await wait_until(lambda: listening(hub) == {0, 1}, 20, "both workers listening")
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()


def lines(hub: HubProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in hub.log.read_text().splitlines() if line.startswith("{")]


def listening(hub: HubProcess) -> set[int]:
    """The workers that listen on the port by now."""
    return {e["worker"] for e in lines(hub) if e["event"] == "hub_started" and "worker" in e}


def started(hub: HubProcess) -> dict[int, int]:
    """Each worker's current PID, from the supervisor's log."""
    pids: dict[int, int] = {}
    for entry in lines(hub):
        if entry["event"] == "worker_started":
            pids[entry["worker"]] = entry["pid"]
    return pids


async def metric(http: aiohttp.ClientSession, hub: HubProcess, name: str, **labels: str) -> float:
    async with http.get(hub.url("/metrics")) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def publish(http: aiohttp.ClientSession, hub: HubProcess, account: str, n: int) -> str:
    url = hub.url(f"/accounts/{account}/events")
    for _ in range(100):  # a request may meet the worker being killed
        try:
            async with http.post(
                url, json={"type": "T", "payload": n}, headers=bearer("svc", "*")
            ) as response:
                if response.status == 201:
                    return str((await response.json())["id"])
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)  # retry pacing, not a synchronisation
    raise AssertionError("not published")


async def test_two_workers_serve_one_port_and_their_metrics_add_up(workers: HubProcess) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        sockets = [
            await http.ws_connect(workers.url(f"/ws/a{n}"), headers=bearer(f"a{n}"))
            for n in range(20)
        ]
        for ws in sockets:
            assert (await ws.receive_json(timeout=10))["op"] == "welcome"
        opened_by = {e["worker"] for e in lines(workers) if e["event"] == "session_opened"}
        assert opened_by == {0, 1}  # the kernel spread the connections over both
        for n in range(10):
            await publish(http, workers, f"a{n}", n)

        async def totals_seen() -> bool:  # whichever worker answers, it counts both
            published = await metric(http, workers, "hub_events_published_total", via="http")
            open_ws = await metric(http, workers, "hub_sockets_open", via="ws")
            return published == 10 and open_ws == 20

        async def totals_seen_by_both() -> bool:  # each worker's view of the other is <= 1 s old
            return all([await totals_seen() for _ in range(6)])

        await wait_until(totals_seen_by_both, 10, "the totals of both workers")


async def test_a_killed_worker_is_restarted_and_its_clients_lose_nothing(
    workers: HubProcess,
) -> None:
    received: dict[str, list[str]] = {f"k{n}": [] for n in range(8)}
    published: dict[str, list[str]] = {account: [] for account in received}

    async def follow(account: str) -> None:
        url = workers.url(f"/ws/{account}").replace("http", "ws", 1)
        async with HubClient(url, token=token(account)) as client:
            async for event in client:
                received[account].append(event.id)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        followers = [asyncio.create_task(follow(account)) for account in received]
        await wait_until(
            lambda: sum(e["event"] == "session_opened" for e in lines(workers)) >= 8, 20, "sockets"
        )
        for account in received:
            published[account].append(await publish(http, workers, account, 0))
        before = await metric(http, workers, "hub_events_published_total", via="http")
        # The worker holding the most of those sockets (the kernel spread them over both).
        holders = [e["worker"] for e in lines(workers) if e["event"] == "session_opened"]
        victim = max(set(holders), key=holders.count)
        pid = started(workers)[victim]
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: started(workers)[victim] != pid, 20, "the worker restarted")
        assert alive(started(workers)[victim])
        for n in range(1, 4):
            for account in received:
                published[account].append(await publish(http, workers, account, n))
        await wait_until(
            lambda: all(received[a] == published[a] for a in received), 30, "every event"
        )
        # The dead worker's counts still count: totals never go back.
        assert await metric(http, workers, "hub_events_published_total", via="http") >= before
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    assert any(e["event"] == "worker_exited" and e["worker"] == victim for e in lines(workers))


async def test_sigterm_drains_every_worker_and_the_embedded_redis(workers: HubProcess) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        sockets = [
            await http.ws_connect(workers.url(f"/ws/d{n}"), headers=bearer(f"d{n}"))
            for n in range(10)
        ]
        for ws in sockets:
            await ws.receive_json(timeout=10)
        redis_pid = next(e["pid"] for e in lines(workers) if e["event"] == "embedded_redis_started")
        pids = list(started(workers).values())
        workers.process.send_signal(signal.SIGTERM)
        for ws in sockets:
            message = await ws.receive(timeout=20)
            assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert await asyncio.to_thread(workers.process.wait, 30) == 0
    assert not any(alive(pid) for pid in [*pids, redis_pid])


async def test_a_second_hub_on_the_same_port_is_refused(
    workers: HubProcess, tmp_path: Path
) -> None:
    """Workers share their port through SO_REUSEPORT; another `hub serve --workers` on it
    would quietly split its traffic with this one, so it stops in one line instead."""
    env = {**workers.env, "HUB_DATA_DIR": str(tmp_path / "other")}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        f"hub: error: cannot listen on 127.0.0.1:{workers.port}: Address already in use"
    ]
