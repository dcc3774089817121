"""Chromium's own `EventSource` on `/sse`, and the HTTP API seen from other origins' pages.

Real processes: `hub serve` (restarted on the same port), a Redis this test stops and
restarts, Debian's chromium through Playwright. Pages are served by the hub (or by small
servers standing for other sites): a page of another origin cannot reach 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.config import Settings
from tests.support import HubProcess, RedisServer, free_port, publish_many, token, wait_until

pytestmark = pytest.mark.browser

# Collects what an EventSource dispatches: welcomes, events, closes, errors, in order.
WATCH = """([url]) => {
    const seen = window.seen = {welcomes: [], ids: [], closes: [], errors: 0, opens: 0};
    const source = window.source = new EventSource(url);
    source.addEventListener("welcome", (m) => seen.welcomes.push(JSON.parse(m.data)));
    source.addEventListener("close", (m) => seen.closes.push(JSON.parse(m.data)));
    source.onmessage = (m) => seen.ids.push([JSON.parse(m.data).id, m.lastEventId]);
    source.onopen = () => { seen.opens += 1; };
    source.onerror = () => { seen.errors += 1; };
}"""


async def seen(page: Any, condition: str, timeout: float = 20.0) -> Any:
    """Wait until `condition` (JS over `seen`) holds; then `seen`."""
    await page.wait_for_function(
        f"() => {{ const s = window.seen; return {condition}; }}", timeout=timeout * 1000
    )
    return await page.evaluate("() => window.seen")


async def test_an_event_source_resumes_by_itself_and_is_told_when_history_is_lost(
    browser: Any, tmp_path: Path, own_redis: RedisServer, hub_env: dict[str, str]
) -> None:
    """Live events; a hub restart (events published while it is down) resumed by the
    browser's own `Last-Event-ID`, nothing lost or repeated; then Redis restarted without
    its data: the stream ends (4009) and the browser's resume gets `recovered: false`."""
    hub = await asyncio.to_thread(HubProcess, hub_env, tmp_path)
    redis = own_redis.client()
    try:
        page = await browser.new_page()
        await page.goto(hub.url("/healthz"))  # any page of the hub's origin
        await page.evaluate(WATCH, [hub.url(f"/sse/7?token={token('7')}")])
        published = publish_many(redis, "7", [1, 2, 3])
        state = await seen(page, "s.ids.length >= 3")
        epoch = state["welcomes"][0]["epoch"]
        assert state["ids"] == [[i, f"{i}/{epoch}"] for i in published]

        await hub.drain()
        state = await seen(page, "s.closes.length >= 1")
        assert state["closes"] == [{"code": 1001, "reason": published[-1]}]
        published += publish_many(redis, "7", [4, 5])  # while no hub runs
        hub = await asyncio.to_thread(HubProcess, hub_env, tmp_path)
        state = await seen(page, "s.ids.length >= 5")
        assert [i for i, _ in state["ids"]] == published  # once each, in order
        assert state["welcomes"][1] == {
            "op": "welcome",
            "account": "7",
            "last_id": published[2],
            "epoch": epoch,
            "recovered": True,
        }
        published += publish_many(redis, "7", [6])
        await seen(page, "s.ids.length >= 6")

        own_redis.restart()  # no persistence: the account's history is gone
        state = await seen(page, "s.welcomes.length >= 3")
        assert state["closes"][-1]["code"] == 4009
        lost = state["welcomes"][2]
        assert (lost["recovered"], lost["last_id"]) == (False, "0-0")
        assert lost["epoch"] != epoch
        assert [i for i, _ in state["ids"]] == published  # nothing delivered twice meanwhile
    finally:
        await hub.drain()


async def _site(html: str = "<!doctype html><title>site</title>") -> web.AppRunner:
    """A small server standing for another site (its own origin: another port)."""
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.fixture
async def sites() -> AsyncIterator[tuple[str, str]]:
    """Two other origins on 127.0.0.1 (same site as the hub, as its own subdomains would be:
    the browser attaches the hub's cookie to their requests)."""
    runners = [await _site(), await _site()]
    origins = []
    for runner in runners:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        origins.append(f"http://127.0.0.1:{port}")
    yield origins[0], origins[1]
    for runner in runners:
        await runner.cleanup()


FETCH = """async ([url, init]) => {
    try {
        const response = await fetch(url, init);
        return {status: response.status, body: await response.text()};
    } catch (error) {
        return {blocked: String(error)};
    }
}"""


async def test_other_origins_read_history_only_when_allowed_and_never_publish_with_the_cookie(
    browser: Any, make_client: Any, settings: Settings, sites: tuple[str, str]
) -> None:
    allowed, other = sites
    client = await make_client(settings, allowed_origins=frozenset({allowed}))
    hub = f"http://127.0.0.1:{client.server.port}"
    context = await browser.new_context()
    await context.add_cookies([{"name": "hub_token", "value": token("1"), "url": hub}])
    history = f"{hub}/accounts/1/events"
    read = {"credentials": "include"}
    text_post = {
        "method": "POST",
        "credentials": "include",
        "headers": {"Content-Type": "text/plain"},  # a "simple" request: no preflight
        "body": '{"type": "Forged", "payload": 1}',
    }
    json_post = {**text_post, "headers": {"Content-Type": "application/json"}}
    try:
        page = await context.new_page()
        await page.goto(allowed)
        assert await page.evaluate(FETCH, [history, read]) == {
            "status": 200,
            "body": '{"events":[]}',
        }
        bearer = {"headers": {"Authorization": f"Bearer {token('1')}"}}
        assert (await page.evaluate(FETCH, [history, bearer]))["status"] == 200  # preflighted

        page = await context.new_page()
        await page.goto(other)
        assert "blocked" in await page.evaluate(FETCH, [history, read])  # no CORS for it
        assert "blocked" in await page.evaluate(FETCH, [history, text_post])  # sent, refused
        assert "blocked" in await page.evaluate(FETCH, [history, json_post])  # preflight fails
        stored = await client.get(
            "/accounts/1/events", headers={"Authorization": f"Bearer {token('1')}"}
        )
        assert (await stored.json())["events"] == []  # nothing was published
    finally:
        await context.close()


async def test_a_page_that_goes_away_frees_its_socket_at_once(
    browser: Any, make_client: Any, settings: Settings
) -> None:
    """Chromium leaving a page sends its close frame, then resets the connection: the hub's
    reply sits in the kernel's queue for good, and counting it as on its way held the session
    (and its place in the per-account limit) for the whole close deadline."""
    from hub.web.state import SESSIONS
    from hub.web.websocket import CLOSE_TIMEOUT

    client = await make_client(settings)
    sessions = client.app[SESSIONS]
    page = await browser.new_page()
    await page.goto(str(client.make_url("/healthz")))
    url = str(client.make_url("/ws/1")).replace("http", "ws", 1)
    await page.evaluate(
        """([url, token]) => new Promise((opened) => {
            const ws = new WebSocket(url, ["hub", "bearer." + token]);
            ws.onmessage = () => opened();
        })""",
        [url, token("1")],
    )
    assert len(sessions) == 1
    await page.close()
    await wait_until(lambda: not sessions, CLOSE_TIMEOUT - 2, "the session to end with the page")
