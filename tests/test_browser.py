"""The browser client (/client.js) and the demo page (/demo) in a real Chromium, against real
hubs: pages on two accounts talking, a hub restart, a token refresh, every handshake refusal.

Pages are served by the hub under test (a page of another origin cannot reach 127.0.0.1); each
test drives the client through a small harness that records what its callbacks saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from hub.client import token_expiry
from hub.config import Settings
from hub.core import keys
from tests.support import (
    HubProcess,
    RedisServer,
    publish_many,
    token,
    wait_until,
)

pytestmark = pytest.mark.browser

WAIT = 10_000  # ms: how long a page may take to reach a condition

# `start(name, url, options)` opens a client whose callbacks fill window.records[name];
# `options.getToken: true` asks the test for tokens (page.expose_function("mintToken")).
HARNESS = """async ([name, url, options]) => {
  const { HubClient } = await import("/client.js");
  window.clients ??= {};
  window.records ??= {};
  const record = { events: [], states: [], welcomes: [], resets: [], published: [] };
  window.records[name] = record;
  const client = new HubClient(url, {
    ...options,
    getToken: options.getToken ? () => window.mintToken(name) : null,
    onEvent: (event) => record.events.push(event),
    onWelcome: (welcome) => record.welcomes.push(welcome),
    onReset: (welcome) => record.resets.push(welcome),
    onStateChange: (state, reason) => record.states.push([state, reason]),
  });
  window.clients[name] = client;
  client.connect();
}"""


def ws_url(port: int, account: str) -> str:
    return f"ws://127.0.0.1:{port}/ws/{account}"


async def open_page(browser: Any, port: int) -> Any:
    """A page of the hub on `port` (its health check: any page of its origin would do)."""
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{port}/")
    return page


async def start(page: Any, name: str, url: str, **options: Any) -> None:
    await page.evaluate(HARNESS, [name, url, options])


async def record(page: Any, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("name => window.records[name]", name)
    return result


async def client_attr(page: Any, name: str, attribute: str) -> Any:
    return await page.evaluate("([n, a]) => window.clients[n][a]", [name, attribute])


async def wait_for_state(page: Any, name: str, state: str, timeout: float = WAIT) -> None:
    await page.wait_for_function(
        "([n, s]) => window.clients[n].state === s", arg=[name, state], timeout=timeout
    )


async def wait_for_events(page: Any, name: str, count: int, timeout: float = WAIT) -> list[str]:
    """The IDs of the first `count` events the page's client delivered (more would fail)."""
    await page.wait_for_function(
        "([n, k]) => window.records[n].events.length >= k", arg=[name, count], timeout=timeout
    )
    ids = [event["id"] for event in (await record(page, name))["events"]]
    assert len(ids) == count, ids
    return ids


async def publish_from(page: Any, name: str, to: str, payload: Any) -> str:
    event_id: str = await page.evaluate(
        "([n, to, p]) => window.clients[n].publish(to, 'Note', p)", [name, to, payload]
    )
    return event_id


async def test_two_pages_on_two_accounts_exchange_events(
    browser: Any, make_client: Any, settings: Settings
) -> None:
    """Each page publishes to the other (its token's `pub` names it) and receives the other's
    events once, in order; one of them asks for batches. A publish its token does not allow is
    rejected with the hub's error code."""
    hub = await make_client(settings)
    port = hub.server.port
    alice, bob = await open_page(browser, port), await open_page(browser, port)
    await start(alice, "alice", ws_url(port, "alice"), token=token("alice", ["bob"]))
    await start(bob, "bob", ws_url(port, "bob"), token=token("bob", ["alice"]), batch=True)
    await wait_for_state(alice, "alice", "open")
    await wait_for_state(bob, "bob", "open")

    to_bob = [await publish_from(alice, "alice", "bob", {"n": n}) for n in range(3)]
    to_alice = [await publish_from(bob, "bob", "alice", {"n": n}) for n in range(3)]
    assert await wait_for_events(bob, "bob", 3) == to_bob
    assert await wait_for_events(alice, "alice", 3) == to_alice
    assert [e["payload"] for e in (await record(bob, "bob"))["events"]] == [
        {"n": n} for n in range(3)
    ]
    assert await client_attr(alice, "alice", "lastId") == to_alice[-1]

    refused = await alice.evaluate(
        "() => window.clients.alice.publish('carol', 'Note', 1).then("
        "  () => null, (error) => [error.name, error.code])"
    )
    assert refused == ["PublishFailed", "forbidden"]


async def test_events_once_in_order_across_resumes_and_a_reset(
    aiohttp_server: Any, browser: Any
) -> None:
    """Against a scripted server that repeats itself and, on the reconnect, resumes from an
    older position: each ID is delivered once, in order, compared as numbers (past 2^53, and
    sequence numbers of different lengths); reconnects ask for `last_id`, `epoch` and `batch`;
    a `recovered: false` welcome calls onReset, and delivery goes on after its position."""
    from aiohttp import web

    big = 2**53  # 9007199254740993 == 9007199254740992 as a JavaScript number
    ids = [f"{big}-9", f"{big}-10", f"{big + 1}-0", f"{big}-10", f"{big + 1}-0", f"{big + 2}-0"]
    lost = {"op": "welcome", "last_id": "5-0", "epoch": "8", "recovered": False}
    queries: list[dict[str, str]] = []

    def event(event_id: str) -> dict[str, Any]:
        return {"id": event_id, "type": "T", "payload": event_id}

    async def scripted(request: web.Request) -> web.WebSocketResponse:
        queries.append(dict(request.query))
        ws = web.WebSocketResponse(protocols=("hub",))
        await ws.prepare(request)
        if len(queries) == 1:
            await ws.send_json({"op": "welcome", "last_id": "0-0", "epoch": "7", "recovered": True})
            for event_id in ids[:4]:
                await ws.send_json(event(event_id))
            await ws.close(code=1001)
        elif len(queries) == 2:
            await ws.send_json(
                {"op": "welcome", "last_id": ids[2], "epoch": "7", "recovered": True}
            )
            await ws.send_json([event(event_id) for event_id in ids[1:]])  # overlapping
            await ws.close(code=1001)
        else:
            await ws.send_json(lost)
            await ws.send_json([event("6-0")])
            await ws.receive()
        return ws

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="a scripted hub")

    async def client_js(_: web.Request) -> web.Response:
        body = files("hub.client").joinpath("browser", "client.js").read_bytes()
        return web.Response(body=body, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/client.js", client_js)
    app.router.add_get("/ws/h", scripted)
    server = await aiohttp_server(app)
    tab = await open_page(browser, server.port)
    try:
        await start(tab, "h", ws_url(server.port, "h"), batch=True)
        assert await wait_for_events(tab, "h", 5) == [ids[0], ids[1], ids[2], ids[5], "6-0"]
        assert queries == [
            {"batch": "1"},
            {"last_id": ids[2], "epoch": "7", "batch": "1"},
            {"last_id": ids[5], "epoch": "7", "batch": "1"},
        ]
        assert (await record(tab, "h"))["resets"] == [lost]
        assert await client_attr(tab, "h", "lastId") == "6-0"
        assert await client_attr(tab, "h", "epoch") == "8"
    finally:
        await tab.close()  # ends the scripted socket, so that the server stops at once


def order(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("-"))


async def test_pages_resume_across_a_hub_restart_with_nothing_lost_or_repeated(
    browser: Any, tmp_path: Path, own_redis: RedisServer, hub_env: dict[str, str]
) -> None:
    """`hub serve` is stopped and started again on the same port and Redis while events are
    published: both pages reconnect by themselves and deliver exactly the published IDs. A
    publish made from a page while the hub is down is sent once the socket is back."""
    hub = await asyncio.to_thread(HubProcess, hub_env, tmp_path)
    port = hub.port
    published: dict[str, list[str]] = {"r1": [], "r2": []}
    redis = own_redis.client()
    pages = {}
    try:
        for name in published:
            pages[name] = await open_page(browser, port)
            await start(pages[name], name, ws_url(port, name), token=token(name, ["r1", "r2"]))
            await wait_for_state(pages[name], name, "open")

        done = asyncio.Event()

        async def publish_steadily() -> None:
            n = 0
            while not done.is_set():
                for name in published:
                    published[name] += publish_many(redis, name, [n])
                n += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)

        publisher = asyncio.create_task(publish_steadily())
        await wait_until(lambda: len(published["r1"]) >= 10, what="events before the restart")
        await hub.drain()
        await pages["r1"].wait_for_function(
            "() => window.clients.r1.state !== 'open'", timeout=WAIT
        )
        await pages["r1"].evaluate(
            "() => { window.sent = window.clients.r1.publish('r2', 'FromPage', 'queued') }"
        )
        hub = await asyncio.to_thread(HubProcess, hub_env, tmp_path)
        sent = await asyncio.wait_for(pages["r1"].evaluate("() => window.sent"), 20)
        await wait_until(lambda: len(published["r1"]) >= 40, what="events after the restart")
        done.set()
        await publisher

        expected = {"r1": published["r1"], "r2": sorted([*published["r2"], sent], key=order)}
        for name, page in pages.items():
            ids = await wait_for_events(page, name, len(expected[name]), timeout=20_000)
            assert ids == expected[name], name
            seen = await record(page, name)
            assert len(seen["welcomes"]) >= 2, "the page never reconnected"
            assert all(welcome["recovered"] for welcome in seen["welcomes"])
            assert seen["resets"] == []
        assert redis.xlen(keys.SINGLE.account_log("r2")) == len(expected["r2"])  # the page's: once
    finally:
        await hub.drain()


async def test_a_token_is_refreshed_on_the_live_socket_before_it_expires(
    browser: Any, make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    """30 s before `exp` the client asks getToken() and hands the token to the open socket.
    The page's clock runs 28 s behind the hub's, so that a token the hub expires after 4 s
    looks 32 s long to the client: refreshed after 2 s. Past the first token's expiry the same
    socket still delivers (a missed refresh would close it with 4001 and reconnect)."""
    hub = await make_client(settings)
    page = await browser.new_page()
    await page.add_init_script("{ const real = Date.now; Date.now = () => real() - 28_000; }")
    await page.goto(f"http://127.0.0.1:{hub.server.port}/")
    issued: list[str] = []

    def mint_token(name: str) -> str:
        issued.append(token(name, ttl=4))
        return issued[-1]

    await page.expose_function("mintToken", mint_token)
    await start(page, "t", ws_url(hub.server.port, "t"), getToken=True)
    await wait_for_state(page, "t", "open")
    first = publish_many(redis_server.client(), "t", ["before"])
    assert await wait_for_events(page, "t", 1) == first

    first_expiry = token_expiry(issued[0])
    assert first_expiry is not None
    await wait_until(lambda: time.time() > first_expiry + 1, timeout=10, what="its expiry")
    assert len(issued) >= 2, "no refresh was asked for"
    later = publish_many(redis_server.client(), "t", ["after"])
    assert await wait_for_events(page, "t", 2) == first + later

    seen = await record(page, "t")
    assert [state for state, _ in seen["states"]] == ["connecting", "open"]
    assert len(seen["welcomes"]) == 1
    assert await client_attr(page, "t", "closeCode") is None


async def test_each_handshake_failure_reaches_the_page_with_its_close_code(
    browser: Any, make_client: Any, settings: Settings
) -> None:
    """Refusals retrying cannot fix end in "failed" with the documented code and reason; an
    invalid token with getToken() is replaced at once, without backing off."""
    hub = await make_client(settings)
    port = hub.server.port
    page = await open_page(browser, port)
    await page.expose_function("mintToken", lambda _: token("a"))
    cases = {
        "bad_last_id": ("a", {"token": token("a"), "lastId": "latest"}, 4400, "invalid_last_id"),
        "bad_account": ("a:b", {"token": token("a")}, 4400, "invalid_account"),
        "wrong_account": ("b", {"token": token("a")}, 4403, "forbidden"),
        "missing_token": ("a", {}, 4401, "missing_token"),
        "invalid_token": ("a", {"token": "junk"}, 4401, "invalid_token"),
        "expired_token": ("a", {"token": token("a", ttl=-10)}, 4001, "token_expired"),
    }
    for name, (account, options, _, _) in cases.items():
        await start(page, name, ws_url(port, account), **options)
    await start(page, "renewed", ws_url(port, "a"), token="junk", getToken=True)

    for name, (_, _, code, reason) in cases.items():
        await wait_for_state(page, name, "failed")
        assert await client_attr(page, name, "closeCode") == code, name
        assert (await record(page, name))["states"][-1] == ["failed", reason], name
    await wait_for_state(page, "renewed", "open")
    renewed = await record(page, "renewed")
    assert [state for state, _ in renewed["states"]] == ["connecting", "connecting", "open"]
    assert await client_attr(page, "renewed", "closeCode") == 4401


async def test_redis_unavailable_is_1013_and_the_page_keeps_trying(
    browser: Any, make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    hub = await make_client(settings, redis_url=own_redis.url)
    page = await open_page(browser, hub.server.port)
    own_redis.stop()
    await start(page, "u", ws_url(hub.server.port, "u"), token=token("u"))
    await page.wait_for_function("() => window.clients.u.closeCode !== null", timeout=WAIT)
    assert await client_attr(page, "u", "closeCode") == 1013
    assert await client_attr(page, "u", "closeReason") == "unavailable"
    await wait_for_state(page, "u", "waiting")  # backing off, not failed
    await page.evaluate("() => window.clients.u.close()")
    assert await client_attr(page, "u", "state") == "closed"


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where a test keeps what a person should look at: $HUB_TEST_ARTIFACTS, else tmp_path."""
    directory = Path(os.environ.get("HUB_TEST_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def test_the_demo_page_connects_publishes_and_resumes_after_a_drop(
    browser: Any, open_client: Any, artifacts: Path
) -> None:
    """/demo on a hub with HUB_AUTH=off: connect, publish, see the event; drop the socket, see
    the client reconnect and resume; a screenshot is kept as a test artifact."""
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"http://127.0.0.1:{open_client.server.port}/demo")
    await page.fill("#account", "demo")
    await page.click("#connect")
    await page.wait_for_function(
        "() => document.querySelector('#state').textContent === 'open'", timeout=WAIT
    )
    await page.fill("#to", "demo")
    await page.fill("#payload", '{"text": "hello from the page"}')
    await page.click("#publish")
    row = page.locator("#events tr:not(.marker)")
    await row.first.wait_for(timeout=WAIT)
    first_id = await page.locator("#events td.id").first.text_content()
    assert await page.locator("#events td.payload").first.text_content() == (
        '{"text":"hello from the page"}'
    )
    assert await page.text_content("#last-id") == first_id
    await page.wait_for_function(
        "id => document.querySelector('#publish-note').textContent === `Stored as ${id}`",
        arg=first_id,
        timeout=WAIT,
    )

    await page.click("#drop")
    await page.wait_for_function(
        "() => document.querySelector('#sockets').textContent === '2'"
        " && document.querySelector('#state').textContent === 'open'",
        timeout=WAIT,
    )
    await page.fill("#type", "Greeting")
    await page.fill("#payload", '{"text": "after the reconnect", "n": 2}')
    await page.click("#publish")
    await page.wait_for_function(
        "() => document.querySelectorAll('#events tr:not(.marker)').length === 2", timeout=WAIT
    )
    assert await row.count() == 2  # resumed: the first event is not delivered again
    assert "resuming after " + str(first_id) in (await page.text_content("#events") or "")

    screenshot = artifacts / "demo.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    print(f"demo screenshot: {screenshot}")
