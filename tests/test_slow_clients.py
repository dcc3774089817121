"""What happens to a client that stops reading: the backlog stays in Redis, then a close."""

from __future__ import annotations

from typing import Any

from aiohttp import WSMsgType

from hub.config import Settings
from hub.core.protocol import CloseCode
from hub.web.state import SESSIONS
from tests.support import RedisServer, bearer, publish_many, receive_json, wait_until

BIG = "x" * 100_000  # a few of these fill the socket buffers between hub and client


async def drain(ws: Any) -> tuple[list[str], Any]:
    """Read event frames until the close frame; return their IDs and the close message."""
    ids = []
    while True:
        message = await ws.receive(timeout=10)
        if message.type is not WSMsgType.TEXT:
            return ids, message
        frame = message.json()
        assert "op" not in frame
        ids.append(frame["id"])


async def test_a_client_that_stops_reading_is_closed_with_4008_and_resumes(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    client = await make_client(settings, send_timeout=1.0)
    ws = await client.ws_connect("/ws/1", headers=bearer("1"))
    await receive_json(ws)
    ids = publish_many(redis_server.client(), "1", [BIG] * 200)  # ~20 MB

    # The client reads nothing; the hub's send blocks, then gives up.
    sessions = client.app[SESSIONS]
    await wait_until(
        lambda: any(s.stopping is CloseCode.SLOW_CONSUMER for s in sessions), what="4008"
    )
    received, close = await drain(ws)
    assert close.type is WSMsgType.CLOSE
    assert close.data == CloseCode.SLOW_CONSUMER
    assert received == ids[: len(received)]  # in order, nothing skipped
    assert len(received) < len(ids)
    assert close.extra == received[-1]  # the reason is the last delivered ID

    resumed = await client.ws_connect(f"/ws/1?last_id={close.extra}", headers=bearer("1"))
    assert (await receive_json(resumed))["recovered"] is True
    rest, _ = await drain_count(resumed, len(ids) - len(received))
    assert received + rest == ids


async def drain_count(ws: Any, count: int) -> tuple[list[str], None]:
    ids = []
    for _ in range(count):
        frame = await receive_json(ws)
        ids.append(frame["id"])
    return ids, None


async def test_a_client_that_lags_past_retention_is_closed_with_4009(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    client = await make_client(settings, retention=100)
    redis = redis_server.client()
    first = publish_many(redis, "1", [BIG] * 100, retention=100)
    ws = await client.ws_connect("/ws/1?last_id=0", headers=bearer("1"))
    welcome = await receive_json(ws)
    # The session sends its first batch (10 MB); the client takes three events, then stops
    # reading, while the account's stream moves on far past its retention.
    started = [(await receive_json(ws))["id"] for _ in range(3)]
    publish_many(redis, "1", ["small"] * 400, retention=100)
    assert redis.xlen("account:1:log") < 400

    received, close = await drain(ws)
    received = started + received
    assert close.type is WSMsgType.CLOSE
    assert close.data == CloseCode.LAGGED
    assert received == first[: len(received)]
    assert close.extra == received[-1]

    again = await client.ws_connect(
        f"/ws/1?last_id={close.extra}&epoch={welcome['epoch']}", headers=bearer("1")
    )
    assert (await receive_json(again))["recovered"] is False


async def test_an_event_published_while_the_session_is_busy_sending_is_delivered(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    """A wake that comes while the delivery task waits on a slow client is not lost: the task
    finds the signal set when it is done, and has the reader read for it."""
    client = await make_client(settings, read_batch=100)
    ws = await client.ws_connect("/ws/busy", headers=bearer("busy"))
    await receive_json(ws)
    redis = redis_server.client()
    # 99 events (< 100: the read is not full, so no read follows unless woken), ~20 MB: too
    # much for the reader to push, so the session reads them itself, and its send blocks.
    backlog = publish_many(redis, "busy", [BIG * 2] * 99)
    # The first of them arriving proves that read was answered; this event wakes the session
    # while it waits on the client.
    received = [(await receive_json(ws))["id"]]
    [late] = publish_many(redis, "busy", ["late"])

    received += [(await receive_json(ws))["id"] for _ in range(99)]
    assert received == [*backlog, late]
