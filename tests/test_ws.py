"""The WebSocket protocol over real TCP against a real Redis."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType
from loadlib import raw

from hub.config import Settings
from hub.core.protocol import CloseCode
from hub.web.state import SESSIONS
from tests.support import (
    RedisServer,
    bearer,
    expect_silence,
    publish_many,
    receive_events,
    receive_json,
    receive_text,
    token,
    wait_until,
)

Client = Any


async def connect(client: Client, account: str, query: str = "", **kwargs: Any) -> Any:
    if "headers" not in kwargs and "protocols" not in kwargs:
        kwargs["headers"] = bearer(account, kwargs.pop("publish", ()))
    ws = await client.ws_connect(f"/ws/{account}{query}", **kwargs)
    welcome = await receive_json(ws)
    assert welcome["op"] == "welcome"
    ws.welcome = welcome
    return ws


async def publish(client: Client, account: str, payload: Any = None, type_: str = "T") -> str:
    response = await client.post(
        f"/accounts/{account}/events",
        json={"type": type_, "payload": payload},
        headers=bearer("svc", "*"),
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def test_seed_protocol_in_auth_off_mode(open_client: Client) -> None:
    """The seed tutorial's session: ping → pong, event:<id> reaches that account's sockets."""
    ws1 = await open_client.ws_connect("/ws/1")
    ws2 = await open_client.ws_connect("/ws/2")
    welcome = await receive_json(ws1)
    assert welcome == {
        "op": "welcome",
        "account": "1",
        "last_id": "0-0",
        "epoch": welcome["epoch"],
        "recovered": True,
    }
    await receive_json(ws2)

    await ws1.send_str("ping")
    assert await receive_text(ws1) == "pong"

    await ws1.send_str("event:2")
    [event] = await receive_events(ws2, 1)
    assert event["type"] == "SOME_EVENT"
    assert event["payload"] == "Some payload for account(2) from account(1)"
    await expect_silence(ws1, 0.2)  # no reply on success, and nothing for account 1

    await ws1.send_str("event:1")
    [own] = await receive_events(ws1, 1)
    assert own["payload"] == "Some payload for account(1) from account(1)"


async def test_delivery_across_accounts_in_order(client: Client) -> None:
    sockets = {account: [await connect(client, account) for _ in range(2)] for account in "abc"}
    published: dict[str, list[str]] = {account: [] for account in "abc"}
    for n in range(10):
        for account in "abc":
            published[account].append(await publish(client, account, {"n": n}))
    for account, group in sockets.items():
        for ws in group:
            events = await receive_events(ws, 10)
            assert [e["id"] for e in events] == published[account]
            assert [e["payload"]["n"] for e in events] == list(range(10))


async def test_json_publish_acks_with_the_ref(client: Client) -> None:
    sender = await connect(client, "1", publish=["1", "2"])
    receiver = await connect(client, "2")
    await sender.send_json(
        {"op": "publish", "to": "2", "type": "Hi", "payload": {"x": 1}, "ref": "r-1"}
    )
    ack = await receive_json(sender)
    assert ack["op"] == "ack"
    assert ack["ref"] == "r-1"
    [event] = await receive_events(receiver, 1)
    assert event == {"id": ack["id"], "type": "Hi", "payload": {"x": 1}}


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("hello", "invalid_message"),
        ('{"op": "subscribe", "ref": 9}', "unknown_op"),
        ('{"op": "publish", "to": "a b", "type": "T", "ref": 9}', "invalid_account"),
        ('{"op": "publish", "to": "2", "type": "", "ref": 9}', "invalid_type"),
        ('{"op": "publish", "to": "3", "type": "T", "ref": 9}', "forbidden"),
        ("event:3", "forbidden"),
        ("event:", "invalid_account"),
    ],
)
async def test_errors_keep_the_socket_open(client: Client, message: str, code: str) -> None:
    ws = await connect(client, "1", publish=["1", "2"])
    await ws.send_str(message)
    error = await receive_json(ws)
    assert error["op"] == "error"
    assert error["code"] == code
    assert error["ref"] == (9 if '"ref"' in message else None)
    await ws.send_str("ping")
    assert await receive_text(ws) == "pong"


async def test_close_codes_are_those_the_client_got(make_client: Any, settings: Settings) -> None:
    """What `session_closed` logs: the code the hub sent, the client's own, or 1006 when no
    close frame was exchanged (here: no pong to the hub's ping)."""
    client = await make_client(settings, heartbeat=0.2)
    sessions = client.app[SESSIONS]
    silent = await client.ws_connect("/ws/1", headers=bearer("1"), autoping=False)
    await receive_json(silent)
    [session] = sessions
    await wait_until(lambda: not sessions, what="the missed pong to close the socket")
    assert session.close_code == 1006

    polite = await client.ws_connect("/ws/1", headers=bearer("1"))
    await receive_json(polite)
    [session] = sessions
    await polite.close(code=4321)
    await wait_until(lambda: not sessions, what="the client's close")
    assert session.close_code == 4321


async def test_binary_messages_get_an_error_frame(client: Client) -> None:
    ws = await connect(client, "1")
    await ws.send_bytes(b"\x00\x01")
    assert (await receive_json(ws))["code"] == "binary_unsupported"
    await ws.send_str("ping")
    assert await receive_text(ws) == "pong"


async def test_messages_above_the_limit_close_with_1009(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, max_message=2048)
    ws = await connect(client, "1")
    await ws.send_str("x" * 1024)  # under the limit: an error frame, the socket stays open
    assert (await receive_json(ws))["code"] == "invalid_message"
    await ws.send_str("x" * 4096)
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE
    assert ws.close_code == 1009
    assert message.extra == "too_large"


@pytest.mark.parametrize("how", ["header", "subprotocol", "cookie", "query"])
async def test_the_four_ways_of_presenting_a_token(client: Client, how: str) -> None:
    secret = token("1")
    kwargs: dict[str, Any] = {}
    query = ""
    if how == "header":
        kwargs["headers"] = {"Authorization": f"Bearer {secret}"}
    elif how == "subprotocol":
        kwargs["protocols"] = ("hub", f"bearer.{secret}")
    elif how == "cookie":
        kwargs["headers"] = {"Cookie": f"hub_token={secret}"}
    else:
        query = f"?token={secret}"
        kwargs["headers"] = {}  # the query alone (`connect` would add a header otherwise)
    ws = await connect(client, "1", query, **kwargs)
    if how == "subprotocol":
        assert ws.protocol == "hub"
    assert ws.welcome["account"] == "1"


async def upgrade_status(
    client: Client, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """The HTTP status and error code of a refused upgrade (a client not offering `hub`)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        await client.ws_connect(path, headers=headers)
    connection, reply = await raw.websocket("127.0.0.1", client.server.port, path, headers=headers)
    await connection.close()
    assert reply.status == error.value.status
    return reply.status, reply.json()["error"]


async def test_upgrade_refusals(client: Client) -> None:
    assert await upgrade_status(client, "/ws/1") == (401, "missing_token")
    assert await upgrade_status(client, "/ws/1", headers={"Authorization": "Bearer junk"}) == (
        401,
        "invalid_token",
    )
    assert await upgrade_status(client, "/ws/1", headers=bearer("1", ttl=-1)) == (
        401,
        "token_expired",
    )
    assert await upgrade_status(client, "/ws/2", headers=bearer("1")) == (403, "forbidden")
    assert (await upgrade_status(client, "/ws/a:b", headers=bearer("1")))[0] == 400
    assert await upgrade_status(client, "/ws/1?last_id=latest", headers=bearer("1")) == (
        400,
        "invalid_last_id",
    )


async def test_plain_get_on_the_socket_path_is_400(client: Client) -> None:
    response = await client.get("/ws/1", headers=bearer("1"))
    assert (response.status, (await response.json())["error"]) == (400, "not_websocket")


async def test_origins(make_client: Any, settings: Settings) -> None:
    client = await make_client(settings, allowed_origins=frozenset({"https://app.example"}))
    await connect(client, "1", headers={**bearer("1"), "Origin": "https://app.example"})
    await connect(client, "1")  # no Origin header: always allowed (non-browser clients)
    status = await upgrade_status(
        client, "/ws/1", headers={**bearer("1"), "Origin": "https://evil.example"}
    )
    assert status == (403, "origin_not_allowed")


async def test_last_id_dollar_skips_history_and_resolves_to_a_concrete_id(client: Client) -> None:
    old = await publish(client, "1", "old")
    ws = await connect(client, "1", "?last_id=$")
    assert ws.welcome["last_id"] == old
    new = await publish(client, "1", "new")
    [event] = await receive_events(ws, 1)
    assert event["id"] == new


async def test_resume_after_an_id_with_the_epoch(client: Client) -> None:
    ids = [await publish(client, "1", n) for n in range(5)]
    first = await connect(client, "1")
    epoch = first.welcome["epoch"]
    await receive_events(first, 5)

    ws = await connect(client, "1", f"?last_id={ids[1]}&epoch={epoch}")
    assert (ws.welcome["last_id"], ws.welcome["recovered"]) == (ids[1], True)
    assert [e["id"] for e in await receive_events(ws, 3)] == ids[2:]
    await expect_silence(ws, 0.2)


async def test_a_different_epoch_is_not_recovered(client: Client) -> None:
    ids = [await publish(client, "1", n) for n in range(3)]
    ws = await connect(client, "1", f"?last_id={ids[0]}&epoch=123")
    assert ws.welcome["recovered"] is False


async def test_a_lost_account_gets_a_new_epoch_and_is_not_recovered(
    client: Client, redis_server: RedisServer
) -> None:
    ids = [await publish(client, "1", n) for n in range(3)]
    ws = await connect(client, "1")
    epoch = ws.welcome["epoch"]
    layout = redis_server.layout
    redis_server.client().delete(layout.account_log("1"))  # Redis lost the account
    redis_server.client().delete(layout.account_epoch("1"))
    again = await connect(client, "1", f"?last_id={ids[-1]}&epoch={epoch}")
    assert again.welcome["recovered"] is False
    assert again.welcome["epoch"] != epoch
    fresh = await publish(client, "1", "after the loss")
    assert [e["id"] for e in await receive_events(again, 1)] == [fresh]


async def test_a_trimmed_away_position_is_not_recovered(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, retention=10)
    ids = [await publish(client, "1", n) for n in range(300)]
    ws = await connect(client, "1", f"?last_id={ids[0]}")
    assert ws.welcome["recovered"] is False
    recent = await connect(client, "1", f"?last_id={ids[-2]}")
    assert recent.welcome["recovered"] is True
    assert [e["id"] for e in await receive_events(recent, 1)] == [ids[-1]]


async def test_foreign_plain_text_payloads_arrive_as_strings(
    client: Client, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    redis.xadd(redis_server.layout.account_log("1"), {"type": "Legacy", "payload": "plain words"})
    redis.xadd(
        redis_server.layout.account_log("1"), {"type": "Legacy", "payload": '{"json": true}'}
    )
    ws = await connect(client, "1")
    events = await receive_events(ws, 2)
    assert [e["payload"] for e in events] == ["plain words", {"json": True}]


async def test_an_expired_token_closes_the_socket_with_4001(client: Client) -> None:
    ws = await client.ws_connect("/ws/1", headers=bearer("1", ttl=1.5))
    await receive_json(ws)
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE
    assert ws.close_code == CloseCode.TOKEN_EXPIRED


async def test_shutdown_closes_sockets_with_1001_and_the_last_id(client: Client) -> None:
    ws = await connect(client, "1")
    last = await publish(client, "1", "x")
    await receive_events(ws, 1)
    await client.server.close()
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE
    assert (message.data, message.extra) == (1001, last)


async def test_heartbeat_pings_are_sent(make_client: Any, settings: Settings) -> None:
    client = await make_client(settings, heartbeat=0.2)
    ws = await client.ws_connect("/ws/1", headers=bearer("1"), autoping=False)
    await receive_json(ws)
    message = await ws.receive(timeout=5)
    assert message.type is WSMsgType.PING
    await ws.pong(message.data)
    await ws.send_str("ping")
    assert await receive_text(ws) == "pong"


async def test_batched_frames_carry_several_events_in_order(
    client: Client, redis_server: RedisServer
) -> None:
    ids = publish_many(redis_server.client(), "1", list(range(250)))
    ws = await connect(client, "1", "?batch=1")
    received: list[str] = []
    while len(received) < len(ids):
        frame = await receive_json(ws)
        assert isinstance(frame, list)
        assert frame
        received += [event["id"] for event in frame]
    assert received == ids
    later = await publish(client, "1", "one more")
    assert [e["id"] for e in await receive_json(ws)] == [later]


async def test_batch_must_be_0_or_1(client: Client) -> None:
    assert await upgrade_status(client, "/ws/1?batch=yes", headers=bearer("1")) == (
        400,
        "invalid_batch",
    )


async def test_many_sockets_of_one_account_get_a_burst_once_and_in_order(
    client: Client, redis_server: RedisServer
) -> None:
    sockets = [await connect(client, "1", "?last_id=$") for _ in range(30)]
    redis = redis_server.client()
    ids = []
    for _ in range(5):  # bursts landing while earlier reads are in flight
        ids += publish_many(redis, "1", list(range(120)))
    for ws in sockets:
        assert [e["id"] for e in await receive_events(ws, len(ids))] == ids
        await expect_silence(ws, 0.01)


async def test_a_socket_publish_with_a_key_is_stored_once(
    client: Client, redis_server: RedisServer
) -> None:
    ws = await connect(client, "7", publish=["7"])
    message = {"op": "publish", "to": "7", "type": "T", "payload": 1, "key": "k1"}
    await ws.send_json({**message, "ref": 1})
    await ws.send_json({**message, "ref": 2})
    frames = [await receive_json(ws) for _ in range(3)]  # two acks and the event, any order
    acks = {frame["ref"]: frame for frame in frames if frame.get("op") == "ack"}
    [event] = [frame for frame in frames if "op" not in frame]
    assert acks[1] == {"op": "ack", "ref": 1, "id": event["id"]}
    assert acks[2] == {"op": "ack", "ref": 2, "id": event["id"], "replayed": True}
    assert redis_server.client().xlen(redis_server.layout.account_log("7")) == 1
    await ws.send_json({**message, "key": 5, "ref": 3})
    error = await receive_json(ws)
    assert (error["ref"], error["code"]) == (3, "invalid_idempotency_key")
    await ws.send_json({**message, "payload": 2, "ref": 4})
    conflict = await receive_json(ws)
    assert (conflict["ref"], conflict["code"]) == (4, "idempotency_key_reused")


async def refusal_in_band(client: Client, path: str, protocols: tuple[str, ...]) -> tuple[Any, Any]:
    """A client offering `hub` (a browser's way): the upgrade is accepted, then closed at
    once with a code and reason it can read. Returns the close code and reason."""
    ws = await client.ws_connect(path, protocols=protocols)
    assert ws.protocol == "hub"
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE, message
    return message.data, message.extra


async def test_browsers_read_why_an_upgrade_was_refused(client: Client) -> None:
    def offer(subject: str = "1", **options: Any) -> tuple[str, ...]:
        return ("hub", f"bearer.{token(subject, **options)}")

    cases = [
        ("/ws/1", ("hub",), (4401, "missing_token")),
        ("/ws/1", ("hub", "bearer.junk"), (4401, "invalid_token")),
        ("/ws/1", offer(ttl=-1), (4001, "token_expired")),
        ("/ws/2", offer(), (4403, "forbidden")),
        ("/ws/1?last_id=latest", offer(), (4400, "invalid_last_id")),
        ("/ws/1?epoch=x", offer(), (4400, "invalid_epoch")),
        ("/ws/1?batch=2", offer(), (4400, "invalid_batch")),
        ("/ws/a:b", offer("1"), (4400, "invalid_account")),
    ]
    for path, protocols, expected in cases:
        assert await refusal_in_band(client, path, protocols) == expected, path
    # The same requests without `hub` keep their HTTP answers.
    assert await upgrade_status(client, "/ws/2", headers=bearer("1")) == (403, "forbidden")


async def test_redis_down_is_1013_for_browsers(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    client = await make_client(settings, redis_url=own_redis.url)
    own_redis.stop()
    offer = ("hub", f"bearer.{token('1')}")
    assert await refusal_in_band(client, "/ws/1", offer) == (1013, "unavailable")


async def test_a_token_subprotocol_needs_hub_and_is_never_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    secret = token("1")
    assert await upgrade_status(
        client, "/ws/1", headers={"Sec-WebSocket-Protocol": f"bearer.{secret}"}
    ) == (400, "subprotocol_required")
    # Offers that match nothing are not logged either (aiohttp would print them).
    ws = await client.ws_connect("/ws/1", protocols=("other", f"x.{secret}"), headers=bearer("1"))
    assert ws.protocol is None
    await receive_json(ws)
    assert secret not in caplog.text
    assert secret.split(".")[2] not in caplog.text


async def test_a_refused_origin_is_http_403_even_for_browsers(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, allowed_origins=frozenset({"https://app.example.com"}))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(
            "/ws/1",
            protocols=("hub", f"bearer.{token('1')}"),
            headers={"Origin": "https://evil.example.com"},
        )
    assert refused.value.status == 403


async def test_a_live_socket_takes_a_fresh_token(client: Client) -> None:
    """`{"op": "auth"}` moves the socket's expiry to the new token's; a token for another
    account is refused and the socket keeps its old one (and its old expiry)."""
    short = token("1", ttl=2)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    refreshed = await connect(client, "1", headers={"Authorization": f"Bearer {short}"})
    await refreshed.send_json({"op": "auth", "token": token("1", ttl=3600), "ref": "r"})
    assert await receive_json(refreshed) == {"op": "ack", "ref": "r"}

    kept = await connect(client, "1", headers={"Authorization": f"Bearer {short}"})
    await kept.send_json({"op": "auth", "token": token("2", ttl=3600), "ref": 1})
    refused = await receive_json(kept)
    assert (refused["op"], refused["ref"], refused["code"]) == ("error", 1, "forbidden")
    await kept.send_json({"op": "auth", "token": "junk", "ref": 2})
    assert (await receive_json(kept))["code"] == "invalid_token"

    close = await kept.receive(timeout=10)  # the old expiry still applies
    assert (close.type, close.data) == (WSMsgType.CLOSE, CloseCode.TOKEN_EXPIRED)
    assert time.time() >= expires
    await refreshed.send_str("ping")  # past the old expiry, still open
    assert await receive_text(refreshed) == "pong"
