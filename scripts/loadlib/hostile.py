"""Hostile-input probes: what an attacker or a broken client sends, and what the hub must
answer. Each probe runs against a live hub over loopback, is bounded in time, and returns
what the hub answered and whether that is the documented answer. scripts/probe.py prints
them as a table; tests/test_hostile.py runs each against a test hub.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from loadlib import raw

# A token with `exp` far beyond anything a timer can hold (header and payload of an HS256 JWT,
# signed by `Target.sign`).
HUGE_EXP = 10**400


@dataclass
class Target:
    """The hub under test and what the probes need to know of its settings."""

    host: str
    port: int
    # (subject, publish rights, claims overrides) -> a token, or None when the hub has no auth
    token: Callable[..., str | None]
    prefix: str = "probe"
    max_message: int = 65536
    send_timeout: float = 20.0
    body_timeout: float = 10.0
    header_timeout: float = 75.0
    _accounts: itertools.count[int] = field(default_factory=itertools.count)

    def account(self) -> str:
        """A fresh account for one probe, so that probes never see each other's events."""
        return f"{self.prefix}-{int(time.time())}-{next(self._accounts)}"

    def auth(self, subject: str, publish: Any = (), **claims: Any) -> dict[str, str]:
        token = self.token(subject, publish, **claims)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def http(self, method: str, path: str, **options: Any) -> raw.Reply:
        return await raw.request(self.host, self.port, method, path, **options)

    async def publish(self, account: str, payload_json: bytes) -> raw.Reply:
        body = b'{"type":"Probe","payload":' + payload_json + b"}"
        headers = {**self.auth("probe-admin", "*"), "Content-Type": "application/json"}
        return await self.http("POST", f"/accounts/{account}/events", headers=headers, body=body)

    async def history(self, account: str, query: str = "") -> raw.Reply:
        return await self.http(
            "GET", f"/accounts/{account}/events{query}", headers=self.auth("probe-admin", "*")
        )

    async def socket(
        self, account: str, query: str = "", *, claims: dict[str, Any] | None = None, **options: Any
    ) -> tuple[raw.Connection, raw.Reply]:
        """Open `account`'s socket with its token (`claims` overriding the token's own)."""
        headers = self.auth(account, **(claims or {}))
        return await raw.websocket(
            self.host, self.port, f"/ws/{account}{query}", headers=headers, **options
        )


@dataclass
class Outcome:
    answer: str  # what the hub did, in a few words
    ok: bool  # whether that is the documented answer
    seconds: float = 0.0


Probe = Callable[[Target], Awaitable[Outcome]]
PROBES: dict[str, tuple[str, Probe]] = {}
SLOW: set[str] = set()  # probes that wait for the hub's own timeouts


def probe(name: str, sends: str, *, slow: bool = False) -> Callable[[Probe], Probe]:
    def register(function: Probe) -> Probe:
        PROBES[name] = (sends, function)
        if slow:
            SLOW.add(name)
        return function

    return register


def nested(depth: int) -> bytes:
    """A JSON value nested `depth` arrays deep."""
    return b"[" * depth + b"1" + b"]" * depth


def answer(reply: raw.Reply) -> str:
    code = reply.json().get("error") if reply.is_json_error else None
    kind = "JSON" if reply.headers.get("content-type", "").startswith("application/json") else ""
    return " ".join(str(part) for part in (reply.status, code or kind) if part)


def expect(reply: raw.Reply, status: int, code: str) -> Outcome:
    ok = reply.status == status and reply.is_json_error and reply.json()["error"] == code
    return Outcome(answer(reply), ok)


async def welcome(connection: raw.Connection) -> dict[str, Any]:
    frame = await connection.read_frame()
    message: dict[str, Any] = orjson.loads(frame.payload)
    assert message.get("op") == "welcome", message
    return message


async def still_open(connection: raw.Connection) -> bool:
    """Whether the socket still answers a ping message with pong."""
    connection.send_frame(raw.OP_TEXT, b"ping")
    while True:
        try:
            frame = await connection.read_frame(5)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return False
        if frame.opcode == raw.OP_TEXT and frame.payload == b"pong":
            return True
        if frame.opcode == raw.OP_CLOSE:
            return False


# --- payloads -------------------------------------------------------------------------------


@probe("payload 254 levels deep", "POST a payload nested 254 deep; read it by socket, history")
async def deepest_payload(target: Target) -> Outcome:
    account = target.account()
    reply = await target.publish(account, nested(254))
    if reply.status != 201:
        return Outcome(answer(reply), False)
    history = await target.history(account)
    connection, _ = await target.socket(account, "?last_id=0")
    try:
        await welcome(connection)
        frame = await connection.read_frame()
        delivered = frame.opcode == raw.OP_TEXT and orjson.loads(frame.payload)["payload"]
    finally:
        await connection.close()
    ok = history.status == 200 and delivered == orjson.loads(nested(254))
    return Outcome(f"201, history {history.status}, delivered {ok}", ok)


@probe("payload 255 levels deep", "POST a payload nested deeper than the hub can encode")
async def too_deep_payload(target: Target) -> Outcome:
    return expect(await target.publish(target.account(), nested(255)), 400, "invalid_payload")


@probe("payload 2^64 integer", "POST an integer beyond 64 bits (would become a float)")
async def big_integer(target: Target) -> Outcome:
    return expect(
        await target.publish(target.account(), b"18446744073709551616"), 400, "invalid_payload"
    )


@probe("payload 2^64-1 integer", "POST the largest 64-bit integer; read it back exactly")
async def largest_integer(target: Target) -> Outcome:
    account = target.account()
    reply = await target.publish(account, b"18446744073709551615")
    history = await target.history(account)
    ok = reply.status == 201 and b'"payload":18446744073709551615' in history.body
    return Outcome(f"{reply.status}, read back exactly: {ok}", ok)


@probe("socket publish too deep", "publish a 255-deep payload over a socket, then ping")
async def socket_too_deep(target: Target) -> Outcome:
    account = target.account()
    connection, _ = await target.socket(account)
    try:
        await welcome(connection)
        message = b'{"op":"publish","to":"%b","type":"T","ref":1,"payload":%b}' % (
            account.encode(),
            nested(255),
        )
        connection.send_frame(raw.OP_TEXT, message)
        frame = await connection.read_frame()
        reply = orjson.loads(frame.payload) if frame.opcode == raw.OP_TEXT else {}
        alive = await still_open(connection)
    finally:
        await connection.close()
    code = reply.get("code")
    return Outcome(f"error {code}, open: {alive}", code == "invalid_payload" and alive)


# --- query strings --------------------------------------------------------------------------


@probe("limit=²", "GET history with a superscript digit as the limit")
async def superscript_limit(target: Target) -> Outcome:
    return expect(await target.history(target.account(), "?limit=%C2%B2"), 400, "invalid_limit")


@probe("after=\uff11\uff12\uff13", "GET history after fullwidth digits")
async def fullwidth_after(target: Target) -> Outcome:
    reply = await target.history(target.account(), "?after=%EF%BC%91%EF%BC%92%EF%BC%93")
    return expect(reply, 400, "invalid_id")


@probe("after=max-max", "GET history after the largest stream ID")
async def after_largest_id(target: Target) -> Outcome:
    top = "18446744073709551615-18446744073709551615"
    reply = await target.history(target.account(), f"?after={top}")
    ok = reply.status == 200 and reply.json() == {"events": []}
    return Outcome(answer(reply), ok)


@probe("last_id=٣", "open a socket after an Arabic-Indic digit")
async def arabic_last_id(target: Target) -> Outcome:
    connection, reply = await target.socket(target.account(), "?last_id=%D9%A3")
    await connection.close()
    return expect(reply, 400, "invalid_last_id")


# --- WebSocket frames -----------------------------------------------------------------------


@probe("message of HUB_MAX_MESSAGE bytes", "send a text message of exactly the limit")
async def message_at_limit(target: Target) -> Outcome:
    connection, _ = await target.socket(target.account())
    try:
        await welcome(connection)
        connection.send_frame(raw.OP_TEXT, b"x" * target.max_message)
        frame = await connection.read_frame()
        code = orjson.loads(frame.payload).get("code") if frame.opcode == raw.OP_TEXT else None
        alive = await still_open(connection)
    finally:
        await connection.close()
    answered = f"close {frame.close_code}" if frame.opcode == raw.OP_CLOSE else f"error {code}"
    return Outcome(f"{answered}, open: {alive}", code == "invalid_message" and alive)


async def close_code_after(target: Target, frame: bytes) -> int:
    """The close code the hub answers `frame` with, sent right after the welcome (1006: the
    connection ended without a close frame)."""
    connection, _ = await target.socket(target.account())
    try:
        await welcome(connection)
        connection.send(frame)
        close = await connection.read_close()
    finally:
        await connection.close()
    return close.close_code if close else 1006


@probe("message of HUB_MAX_MESSAGE + 1 bytes", "send a text message one byte over the limit")
async def message_over_limit(target: Target) -> Outcome:
    code = await close_code_after(
        target, raw.client_frame(raw.OP_TEXT, b"x" * (target.max_message + 1))
    )
    return Outcome(f"close {code}", code == 1009)


@probe("unmasked frame", "send a client frame without a mask (RFC 6455 5.1)")
async def unmasked_frame(target: Target) -> Outcome:
    code = await close_code_after(target, raw.client_frame(raw.OP_TEXT, b"ping", masked=False))
    return Outcome(f"close {code}", code == 1002)


# --- headers, bodies, tokens ----------------------------------------------------------------


@probe("token exp = 10^400", "open a socket with a token whose expiry overflows a timer")
async def huge_expiry(target: Target) -> Outcome:
    account = target.account()
    if target.token(account) is None:
        return Outcome("skipped: the hub has no auth", True)
    connection, reply = await target.socket(account, claims={"exp": HUGE_EXP})
    await connection.close()
    return expect(reply, 401, "invalid_token")


@probe("9 KB token", "send a token longer than a header line may be")
async def long_token(target: Target) -> Outcome:
    headers = {"Authorization": "Bearer " + "eyJ" + "A" * 9000}
    return expect(
        await target.http("GET", "/accounts/a/events", headers=headers), 431, "headers_too_large"
    )


@probe("1 MB header", "send one header of a megabyte")
async def huge_header(target: Target) -> Outcome:
    try:
        reply = await target.http("GET", "/", headers={"X-Big": "b" * 1_000_000})
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        return Outcome(f"connection dropped ({type(error).__name__})", False)
    return expect(reply, 431, "headers_too_large")


@probe("body trickle", "announce 1000 bytes of body, send 2, then wait")
async def trickled_body(target: Target) -> Outcome:
    started = time.monotonic()
    connection = await raw.Connection.open(target.host, target.port)
    try:
        headers = {**target.auth("probe-admin", "*"), "Content-Type": "application/json"}
        head = [f"POST /accounts/{target.account()}/events HTTP/1.1", f"Host: {target.host}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += ["Content-Length: 1000"]
        connection.send(("\r\n".join(head) + '\r\n\r\n{"').encode())
        reply = await connection.read_reply(timeout=target.body_timeout + 10)
    except TimeoutError:
        return Outcome("still held", False, time.monotonic() - started)
    finally:
        await connection.close()
    outcome = expect(reply, 408, "request_timeout")
    outcome.seconds = time.monotonic() - started
    return outcome


@probe("Server header", "GET / and read the Server header")
async def server_header(target: Target) -> Outcome:
    reply = await target.http("GET", "/")
    server = reply.headers.get("server", "")
    return Outcome(f"Server: {server}", server == "hub")


@probe("headers trickle", "send half a request head, then nothing", slow=True)
async def trickled_headers(target: Target) -> Outcome:
    started = time.monotonic()
    connection = await raw.Connection.open(target.host, target.port)
    try:
        connection.send(f"GET / HTTP/1.1\r\nHost: {target.host}\r\nX-Slow: ".encode())
        closed = await connection.closed_by_peer(target.header_timeout + 10)
    finally:
        await connection.close()
    elapsed = time.monotonic() - started
    return Outcome(f"closed after {elapsed:.0f} s" if closed else "still held", closed, elapsed)


@probe("stuck client", "open a socket, read nothing, get 12 MB of events", slow=True)
async def stuck_client(target: Target) -> Outcome:
    """The hub must give up on a client that reads nothing: close (4008), and when even the
    close frame cannot be sent, drop the connection, within the send timeout and a few
    seconds; a connection held forever would let such clients exhaust the hub's sockets."""
    # More than the kernel's buffers hold (4 MB each way by default on Linux).
    return await reading_nothing(target, 12_000_000, target.send_timeout + 15)


@probe(
    "stuck client, token expires",
    "read nothing, hold 600 KB unread, let the token expire",
    slow=True,
)
async def stuck_client_expiring(target: Target) -> Outcome:
    """The same for a close the hub decides while its own buffers are empty: everything
    unread waits in the kernel, which would keep it, and the connection, for minutes."""
    if target.token(target.prefix) is None:
        return Outcome("skipped: the hub has no auth", True)
    expiry = int(time.time()) + 3
    return await reading_nothing(target, 600_000, expiry - time.time() + 15, exp=expiry)


@probe("stuck event stream", "open /sse, read nothing, get 12 MB of events", slow=True)
async def stuck_event_stream(target: Target) -> Outcome:
    """The same for an event stream: its close event cannot reach the client either."""
    account = target.account()
    connection = await raw.Connection.open(target.host, target.port, receive_buffer=4096)
    try:
        head = [f"GET /sse/{account} HTTP/1.1", f"Host: {target.host}"]
        head += [f"{name}: {value}" for name, value in target.auth(account).items()]
        connection.send(("\r\n".join(head) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            status = await connection.reader.readuntil(b"\r\n")
            if b" 200 " not in status:
                return Outcome(status.decode("latin-1").strip(), False)
            await connection.reader.readuntil(b"event: welcome")
        connection.stop_reading()
        failed = await publish_big(target, account, 12_000_000)
        return failed or await released(connection, target.send_timeout + 15)
    finally:
        await connection.close()


async def reading_nothing(target: Target, size: int, limit: float, **claims: Any) -> Outcome:
    """Open a socket (its token with `claims`), read nothing, have about `size` bytes of
    events published to it: whether the hub ends the connection within `limit` seconds."""
    account = target.account()
    connection, _ = await target.socket(account, receive_buffer=4096, claims=claims)
    try:
        await welcome(connection)
        connection.stop_reading()
        failed = await publish_big(target, account, size)
        return failed or await released(connection, limit)
    finally:
        await connection.close()


async def publish_big(target: Target, account: str, size: int) -> Outcome | None:
    """Publish about `size` bytes of events that each fit in one HTTP body."""
    big = orjson.dumps("x" * (min(target.max_message, 65536) - 100))
    for _ in range(size // len(big)):
        reply = await target.publish(account, big)
        if reply.status != 201:
            return Outcome(f"publish answered {answer(reply)}", False)
    return None


async def released(connection: raw.Connection, limit: float) -> Outcome:
    """Whether the hub ends a connection that reads nothing within `limit` seconds, as the
    kernel sees it (the client cannot read a close)."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < limit:
        if connection.tcp_state() in (raw.TCP_STATE_CLOSE, raw.TCP_STATE_CLOSE_WAIT):
            return Outcome(f"released after {elapsed:.0f} s", True, elapsed)
        await asyncio.sleep(0.2)
    return Outcome(f"still held after {limit:.0f} s", False)


async def run(target: Target, name: str) -> Outcome:
    """Run one probe; an exception is an answer too (a failed one)."""
    started = time.monotonic()
    try:
        outcome = await PROBES[name][1](target)
    except Exception as error:
        outcome = Outcome(f"probe error: {type(error).__name__}: {error}"[:120], False)
    if not outcome.seconds:
        outcome.seconds = time.monotonic() - started
    return outcome
