from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from hub import logs
from hub.config import AuthMode, Settings
from hub.web.app import create_app
from hub.web.server import HubRunner
from tests.support import (
    HUB_LOGS,
    SECRET,
    RedisCluster,
    RedisServer,
    free_port,
    secrets_in_logs,
)


class HubTestServer(TestServer):
    """A test server on the hub's own runner (the one `hub serve` uses)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        # As `hub serve` runs: a connection lost does not cancel its handler.
        return HubRunner(self.app, **{**kwargs, "handler_cancellation": False})


BOTH_BACKENDS = {"test_ws", "test_http", "test_invariants"}
"""The suites that run against a single Redis node and against a Redis Cluster."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test of BOTH_BACKENDS on the shared Redis runs twice: single node, then cluster.
    (A test of one node's own behaviour, e.g. its commands counted or a restart of it, asks
    for `single_redis` or `own_redis` instead and runs once.)"""
    module = metafunc.module.__name__.rpartition(".")[2]
    names = metafunc.fixturenames
    if module in BOTH_BACKENDS and "redis_server" in names and "single_redis" not in names:
        metafunc.parametrize("backend", ["single", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def single_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole run, on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One real Redis Cluster (3 masters, 3 replicas) for the whole run."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "single")


@pytest.fixture
def redis_server(backend: str, request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The shared Redis of this test's backend, emptied for it."""
    server: RedisServer | RedisCluster = request.getfixturevalue(f"{backend}_redis")
    server.flushall()
    return server


@pytest.fixture
def redis_url(redis_server: RedisServer | RedisCluster) -> str:
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, for tests that stop, kill or restart it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(tmp_path: Path, own_redis: RedisServer) -> dict[str, str]:
    """The environment of a `hub serve` (tests.support.HubProcess) on this test's own Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    return env | {
        "HUB_SECRET": SECRET,
        "HUB_PORT": str(free_port()),
        "REDIS_URL": own_redis.url,
        "HUB_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, secret=SECRET, heartbeat=60.0)


@pytest.fixture
async def make_client(aiohttp_client: Any) -> Any:
    """Start a hub (create_app + a real TCP server) with the given settings."""

    async def make(settings: Settings, **overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(
            HubTestServer(create_app(dataclasses.replace(settings, **overrides)))
        )

    return make


@pytest.fixture
async def client(make_client: Any, settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    return await make_client(settings)


@pytest.fixture
async def open_client(make_client: Any, settings: Settings) -> TestClient[Any, Any]:
    """A hub with HUB_AUTH=off (the seed's trust-the-path mode)."""
    return await make_client(settings, auth=AuthMode.OFF, secret=None)


@pytest.fixture(scope="session", autouse=True)
def quiet_logs() -> None:
    """Warnings and errors only: per-connection info lines would drown test output."""
    logs.configure("warning", json=False)


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_hub_logs() -> Iterator[None]:
    """After the whole run: no line that a `hub serve` of any test wrote (every level, the
    access log included) holds a token, the cookie or a query string."""
    yield
    leaks = secrets_in_logs(HUB_LOGS)
    assert not leaks, "hub logs leak secrets:\n" + "\n".join(leaks[:20])


CHROMIUM = "/usr/bin/chromium"  # Debian's (./run installs it); Playwright cannot fetch its own
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright; pages must be served by the hub under test
    (a page of another origin, e.g. about:blank, cannot reach 127.0.0.1)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()
