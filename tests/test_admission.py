"""Admission limits, each hit on purpose: the documented answer, the others unaffected."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError
from aiohttp.test_utils import TestClient
from loadlib import raw

from hub.config import Settings
from hub.core.admission import TokenBucket
from hub.web.state import SESSIONS
from tests.support import bearer, receive_events, receive_json, token, wait_until
from tests.test_metrics import scrape
from tests.test_ws import connect, publish

Client = TestClient[Any, Any]


async def refusal(client: Client, path: str, subject: str) -> tuple[int, str, str | None]:
    """A subscription's HTTP refusal (a WebSocket upgrade, or an event stream's GET): status,
    error code, Retry-After."""
    headers = bearer(subject)
    if path.startswith("/sse/"):
        response = await client.get(path, headers=headers)
        body = await response.json()
        return response.status, body["error"], response.headers.get("Retry-After")
    connection, reply = await raw.websocket("127.0.0.1", client.server.port, path, headers=headers)
    await connection.close()
    return reply.status, reply.json()["error"], reply.headers.get("retry-after")


async def in_band(client: Client, path: str, subject: str) -> tuple[int | None, str]:
    """A browser's refusal: the close code and reason of an accepted upgrade."""
    ws = await client.ws_connect(path, protocols=("hub", f"bearer.{token(subject)}"))
    message = await ws.receive(timeout=10)
    return ws.close_code, message.extra


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    assert bucket.take(0.5) is True  # one token back after 1/rate
    assert bucket.take(0.5) is False
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


async def test_a_full_process_refuses_new_sockets_with_503_too_busy(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, max_sockets=2)
    first = await connect(client, "1")
    await connect(client, "2")
    status, code, retry_after = await refusal(client, "/ws/3", "3")
    assert (status, code) == (503, "too_busy")
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert await refusal(client, "/sse/3", "3") == (503, "too_busy", retry_after)
    assert await in_band(client, "/ws/3", "3") == (1013, "too_busy")
    # Those already open are served, and so is the HTTP API.
    published = await publish(client, "1", "still served")
    assert [e["id"] for e in await receive_events(first, 1)] == [published]
    await first.close()
    sessions = client.app[SESSIONS]
    await wait_until(lambda: len(sessions) == 1, what="the closed socket to be gone")
    await connect(client, "3")  # a place freed: admitted
    metrics = await scrape(client)
    assert metrics[("hub_handshakes_refused_total", (("reason", "too_busy"),))] == 3


async def test_accepting_faster_than_the_rate_is_refused_with_a_retry_after(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, max_accept_rate=1)
    results = []
    for n in range(5):  # far faster than one a second
        response = await client.get(f"/sse/{n}", headers=bearer(str(n)))
        results.append((response.status, response.headers.get("Retry-After")))
        if response.status == 200:
            response.close()
    assert results[0] == (200, None)
    assert (503, "1") in results


async def test_one_account_cannot_take_every_socket(make_client: Any, settings: Settings) -> None:
    client = await make_client(settings, max_sockets_per_account=2)
    first = await connect(client, "1")
    await connect(client, "1")
    assert await refusal(client, "/ws/1", "1") == (429, "too_many_sockets", None)
    assert (await refusal(client, "/sse/1", "1"))[:2] == (429, "too_many_sockets")
    assert await in_band(client, "/ws/1", "1") == (4429, "too_many_sockets")
    await connect(client, "2")  # another account is not affected
    await first.close()
    sessions = client.app[SESSIONS]
    await wait_until(lambda: len(sessions) == 2, what="the closed socket to be gone")
    await connect(client, "1")


async def test_a_socket_publishing_too_fast_gets_rate_limited_errors(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, publish_rate=2)  # burst of 4
    ws = await connect(client, "1", publish=["1"])
    for ref in range(10):
        await ws.send_json({"op": "publish", "to": "1", "type": "T", "payload": ref, "ref": ref})
    replies = []
    while len(replies) < 10:
        frame = await receive_json(ws)
        if "op" in frame:
            replies.append(frame)
    limited = [r["ref"] for r in replies if r["op"] == "error"]
    assert {r["code"] for r in replies if r["op"] == "error"} == {"rate_limited"}
    assert len(limited) >= 5  # at most 4 + what 2/s refills while they are handled
    assert [r["ref"] for r in replies if r["op"] == "ack"][:4] == [0, 1, 2, 3]
    await publish(client, "1", "HTTP is not limited per socket")
    metrics = await scrape(client)
    assert metrics[("hub_publishes_rate_limited_total", ())] == len(limited)


async def test_zero_turns_each_limit_off(make_client: Any, settings: Settings) -> None:
    client = await make_client(
        settings, max_sockets=0, max_accept_rate=0, max_sockets_per_account=0, publish_rate=0
    )
    url = str(client.make_url("/ws/1"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # More sockets on one account than the default allows, as fast as they come.
        sockets = [await session.ws_connect(url, headers=bearer("1", ["1"])) for _ in range(120)]
        assert [(await receive_json(ws))["op"] for ws in sockets] == ["welcome"] * 120
        publisher = sockets[0]
        for ref in range(300):  # more than the default burst
            await publisher.send_json({"op": "publish", "to": "1", "type": "T", "ref": ref})
        await publish(client, "1", "HTTP")
        ops = [(await receive_json(publisher)).get("op") for _ in range(601)]
        assert ops.count("ack") == 300  # and no error among them
        assert ops.count("error") == 0
    with pytest.raises(WSServerHandshakeError):
        await client.ws_connect("/ws/1")  # still checked for a token
