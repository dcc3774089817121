"""Hostile input and stuck clients, over real sockets and a real Redis.

Every probe of scripts/loadlib/hostile.py (the ones `scripts/probe.py` runs against a live
hub) runs here against a test hub with short timeouts; then the cases that need a Redis the
test controls (frozen, restarted empty) or the hub's own log.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from loadlib import hostile, raw

from hub.config import Settings
from hub.web.state import NOTIFIERS, SESSIONS
from hub.web.websocket import CLOSE_TIMEOUT, HubWebSocket
from tests.support import (
    SECRET,
    HubProcess,
    RedisServer,
    bearer,
    free_port,
    publish_many,
    receive_json,
    token,
    wait_until,
)

SEND_TIMEOUT = 1.0


def mint(subject: str, publish: Any = (), **claims: Any) -> str:
    """A test token, with claims overridden as an attacker would sign them (`exp=10**400`)."""
    value = token(subject, publish)
    if not claims:
        return value
    payload = {**jwt.decode(value, SECRET, algorithms=["HS256"]), **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def target_of(client: TestClient[Any, Any]) -> hostile.Target:
    assert client.server.port is not None
    return hostile.Target(
        host="127.0.0.1",
        port=client.server.port,
        token=mint,
        send_timeout=SEND_TIMEOUT,
        body_timeout=1.0,
        header_timeout=1.0,
    )


@pytest.fixture
async def client(make_client: Any, settings: Settings) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_client(
        settings, send_timeout=SEND_TIMEOUT, body_timeout=1.0, header_timeout=1.0
    )
    return client


@pytest.mark.parametrize("name", list(hostile.PROBES))
async def test_probe(client: TestClient[Any, Any], name: str) -> None:
    outcome = await hostile.run(target_of(client), name)
    assert outcome.ok, f"{name}: {outcome.answer}"


async def test_a_stuck_client_is_released_within_the_send_timeout(
    client: TestClient[Any, Any],
) -> None:
    """A client that reads nothing is closed, and when even the close frame cannot reach it,
    its connection is reset: the hub holds neither the session nor the socket."""
    outcome = await hostile.run(target_of(client), "stuck client")
    assert outcome.ok, outcome.answer
    assert outcome.seconds < SEND_TIMEOUT + CLOSE_TIMEOUT + 3
    await wait_until(lambda: not client.app[SESSIONS], timeout=5, what="the session to end")


async def test_a_poison_event_does_not_break_its_account(client: TestClient[Any, Any]) -> None:
    """The deepest payload accepted is delivered; its account goes on working after it."""
    target = target_of(client)
    account = target.account()
    assert (await target.publish(account, hostile.nested(254))).status == 201
    ws = await client.ws_connect(f"/ws/{account}?last_id=0", headers=bearer(account))
    assert (await receive_json(ws))["recovered"] is True
    assert (await receive_json(ws))["payload"] == orjson.loads(hostile.nested(254))
    assert (await target.publish(account, b'{"after": true}')).status == 201
    assert (await receive_json(ws))["payload"] == {"after": True}
    history = await target.history(account)
    assert [e["payload"] for e in history.json()["events"]][1] == {"after": True}


async def test_payloads_another_producer_stored_are_delivered(
    client: TestClient[Any, Any], redis_server: RedisServer
) -> None:
    """Text no client could publish (too deep, not JSON, invalid UTF-8) written straight into
    the stream still reaches the socket, as a string, and does not stop what follows."""
    redis = redis_server.client()
    deepest = hostile.nested(254)  # as deep as a publish may be: delivered as JSON
    deeper = hostile.nested(255)  # parses, but no publisher could have sent it
    deep = b"[" * 1024 + b"]" * 1024  # parses, but a frame around it would be 1,025 deep
    for payload in (deepest, deeper, deep, b"plain", b"\xff\xfe"):
        redis.xadd("account:other:log", {"type": "T", "payload": payload})
    ws = await client.ws_connect("/ws/other?last_id=0", headers=bearer("other"))
    await receive_json(ws)
    payloads = [(await receive_json(ws))["payload"] for _ in range(5)]
    assert payloads == [
        orjson.loads(deepest),
        deeper.decode(),
        deep.decode(),
        "plain",
        "\ufffd\ufffd",
    ]


async def test_a_publish_is_504_when_redis_does_not_answer_and_503_when_unreachable(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    """503 means the event was certainly not stored; 504 that it may have been: a publisher
    retrying on 503 must never create a duplicate."""
    client = await make_client(settings, redis_url=own_redis.url, redis_timeout=1.0)
    headers = bearer("svc", "*")
    body = {"type": "T", "payload": 1}
    assert (await client.post("/accounts/a/events", json=body, headers=headers)).status == 201

    assert own_redis.process is not None
    keyed = {**headers, "Idempotency-Key": "retry-me"}
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # sent, never answered
    try:
        frozen = await client.post("/accounts/a/events", json=body, headers=keyed)
        assert frozen.status == 504
        assert (await frozen.json())["error"] == "outcome_unknown"
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    # Redis ran the command once it woke: that is why the answer could not be 503.
    await wait_until(lambda: own_redis.client().xlen("account:a:log") == 2, what="the event")
    # The retry the 504 calls for, with the same key, stores nothing more.
    retried = await client.post("/accounts/a/events", json=body, headers=keyed)
    assert (retried.status, retried.headers["Idempotent-Replayed"]) == (200, "true")
    assert own_redis.client().xlen("account:a:log") == 2

    ws = await client.ws_connect("/ws/svc", headers=headers)
    await receive_json(ws)
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        await ws.send_json({"op": "publish", "to": "a", "type": "T", "payload": 2, "ref": 7})
        reply = await receive_json(ws, timeout=10)
        assert (reply["op"], reply["ref"], reply["code"]) == ("error", 7, "outcome_unknown")
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)

    own_redis.kill()  # nothing listens: the command cannot have been sent
    down = await client.post("/accounts/a/events", json=body, headers=headers)
    assert down.status == 503
    assert (await down.json())["error"] == "unavailable"


async def test_a_position_lost_by_redis_is_reported_without_an_epoch(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    """Redis restarted without persistence: the client's last ID is not in the new stream,
    which was never trimmed. Events after it are gone, so `recovered` is false."""
    client = await make_client(settings, redis_url=own_redis.url)
    before = publish_many(own_redis.client(), "7", [1, 2, 3])
    own_redis.restart()
    after = publish_many(own_redis.client(), "7", [4, 5])
    await wait_until(client.app[NOTIFIERS][0].healthy, what="the notifier")
    ws = await client.ws_connect(f"/ws/7?last_id={before[1]}", headers=bearer("7"))
    welcome = await receive_json(ws)
    assert welcome["recovered"] is False
    assert [(await receive_json(ws))["id"] for _ in after] == after

    # A position the stream holds is trusted as before.
    again = await client.ws_connect(f"/ws/7?last_id={after[0]}", headers=bearer("7"))
    assert (await receive_json(again))["recovered"] is True


async def test_a_position_deleted_on_purpose_is_not_a_loss(
    client: TestClient[Any, Any], redis_server: RedisServer
) -> None:
    """An operator deleting an event (XDEL: a poison event, say) is not Redis losing data: a
    client whose last event was deleted, or whose `$` was the deleted newest entry, resumes
    with `recovered: true`."""
    redis = redis_server.client()
    _, second, third = publish_many(redis, "8", [1, 2, 3])
    redis.xdel("account:8:log", second)
    ws = await client.ws_connect(f"/ws/8?last_id={second}", headers=bearer("8"))
    assert (await receive_json(ws))["recovered"] is True
    assert (await receive_json(ws))["id"] == third

    redis.xdel("account:8:log", third)
    now = await client.ws_connect("/ws/8?last_id=$", headers=bearer("8"))
    welcome = await receive_json(now)
    assert welcome["last_id"] == third
    resumed = await client.ws_connect(f"/ws/8?last_id={third}", headers=bearer("8"))
    assert (await receive_json(resumed))["recovered"] is True


async def test_the_frame_check_wraps_aiohttp_s_parser(client: TestClient[Any, Any]) -> None:
    """Pins what hub.web.websocket assumes of aiohttp: the parser it hands the connection is the
    one the response keeps as `_parser`, so every client byte goes through the mask check."""
    opened: list[HubWebSocket] = []
    original = HubWebSocket.prepare

    async def spy(self: HubWebSocket, request: Any) -> Any:
        writer = await original(self, request)
        opened.append(self)
        assert request.protocol._payload_parser is self._parser
        assert type(self._parser).__name__ == "_MaskChecked"
        return writer

    HubWebSocket.prepare = spy  # type: ignore[method-assign]
    try:
        ws = await client.ws_connect("/ws/1", headers=bearer("1"))
        await receive_json(ws)
    finally:
        HubWebSocket.prepare = original  # type: ignore[method-assign]
    assert opened


async def test_hub_serve_logs_no_token_no_traceback_and_the_codes_clients_got(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`hub serve` as an operator runs it: oversized headers and broken frames are answered
    and logged in one line each, without the bytes they carried; session_closed gives the
    code the client received."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    env |= {"HUB_SECRET": SECRET, "HUB_PORT": str(port), "REDIS_URL": redis_server.url}
    hub = await asyncio.to_thread(HubProcess, env, tmp_path)  # it waits for /readyz
    try:
        secret_bytes = "eyJ" + secrets.token_urlsafe(7000)
        long = await raw.request(
            "127.0.0.1", port, "GET", "/", headers={"Authorization": secret_bytes}
        )
        assert (long.status, long.json()["error"]) == (431, "headers_too_large")
        huge = await raw.request("127.0.0.1", port, "GET", "/", headers={"X": secret_bytes * 100})
        assert huge.status == 431

        codes = []
        for frame in (
            raw.client_frame(raw.OP_TEXT, b"ping", masked=False),
            raw.client_frame(raw.OP_TEXT, b"x" * 65537),
            raw.client_frame(raw.OP_TEXT, b"\xff\xfe"),
        ):
            connection, reply = await raw.websocket(
                "127.0.0.1", port, "/ws/1", headers={"Authorization": f"Bearer {token('1')}"}
            )
            assert reply.status == 101
            await connection.read_frame()  # welcome
            connection.send(frame)
            close = await connection.read_close()
            codes.append(close.close_code if close else None)
            await connection.close()
        assert codes == [1002, 1009, 1007]
        exp = mint("1", exp=10**400)
        connection, overflow = await raw.websocket(
            "127.0.0.1", port, "/ws/1", headers={"Authorization": f"Bearer {exp}"}
        )
        await connection.close()
        assert (overflow.status, overflow.json()["error"]) == (401, "invalid_token")
    finally:
        hub.process.send_signal(signal.SIGTERM)
        hub.process.wait(timeout=30)
    assert hub.process.returncode == 0
    log = hub.log.read_text()
    assert "Traceback" not in log
    for start in range(0, len(secret_bytes) - 16, 16):
        assert secret_bytes[start : start + 16] not in log
    closed = [orjson.loads(line) for line in log.splitlines() if "session_closed" in line]
    assert sorted(entry["code"] for entry in closed) == [1002, 1007, 1009]  # any order
    unparsable = [line for line in log.splitlines() if "request_unparsable" in line]
    assert len(unparsable) == 2


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [(b"x" * 70_000, 1009, "too_large"), (b"\xff\xfe" * 10, 1007, "")],
)
async def test_a_protocol_error_closes_cleanly_even_while_the_client_sends(
    client: TestClient[Any, Any], message: bytes, code: int, reason: str
) -> None:
    """The hub refuses a message while its rest is still arriving. It must read that rest
    (and the client's close) before closing: closing on unread bytes resets the connection,
    and a browser then reports 1006 instead of the code it was sent."""
    assert client.server.port is not None
    for _ in range(3):
        connection, _ = await raw.websocket(
            "127.0.0.1",
            client.server.port,
            "/ws/1",
            headers={"Authorization": f"Bearer {token('1')}"},
        )
        await connection.read_frame()  # welcome
        connection.send_frame(raw.OP_TEXT, message)
        close = await connection.read_close()
        assert close is not None
        assert (close.close_code, close.close_reason) == (code, reason)
        connection.send_frame(raw.OP_CLOSE, close.payload[:2])
        # An end of stream; a reset would raise ConnectionResetError here.
        assert await asyncio.wait_for(connection.reader.read(), 10) == b""
        await connection.close()
