"""Server-Sent Events at `/sse/{account_id}`: the sockets' guarantees for an `EventSource`.

Over real TCP against a real Redis; the stream is read with the hub's own parser
(`hub.core.eventstream.Parser`, itself checked against the encoder here). The browser's own
`EventSource` is driven in tests/test_browser_sse.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from hub.config import Settings
from hub.core import eventstream
from hub.core.eventstream import Message, Parser
from hub.web.state import SESSIONS
from tests.support import RedisServer, bearer, publish_many, token, wait_until
from tests.test_ws import publish

Client = TestClient[Any, Any]


class Stream:
    """One open event stream, read message by message with a deadline."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.parser = Parser()
        self.pending: list[Message] = []

    async def next(self, timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            while not self.pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("the stream ended")
                self.pending += self.parser.feed(chunk)
        return self.pending.pop(0)

    async def events(self, count: int) -> list[dict[str, Any]]:
        messages = [await self.next() for _ in range(count)]
        assert [m.name for m in messages] == ["message"] * count
        return [orjson.loads(m.data) for m in messages]


async def open_stream(
    client: Client, account: str, query: str = "", headers: dict[str, str] | None = None
) -> tuple[Stream, dict[str, Any]]:
    response = await client.get(
        f"/sse/{account}{query}",
        headers={"Accept": "text/event-stream", **(headers or bearer(account))},
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    stream = Stream(response)
    welcome = await stream.next()
    assert welcome.name == "welcome"
    return stream, orjson.loads(welcome.data)


async def test_events_arrive_live_with_ids_that_carry_the_epoch(client: Client) -> None:
    first = await publish(client, "1", {"n": 1})
    stream, welcome = await open_stream(client, "1")
    assert welcome == {
        "op": "welcome",
        "account": "1",
        "last_id": "0-0",
        "epoch": welcome["epoch"],
        "recovered": True,
    }
    assert stream.parser.last_id == f"0-0/{welcome['epoch']}"  # a resume before any event
    second = await publish(client, "1", "two", type_="Second")
    messages = [await stream.next(), await stream.next()]
    assert [orjson.loads(m.data) for m in messages] == [
        {"id": first, "type": "T", "payload": {"n": 1}},
        {"id": second, "type": "Second", "payload": "two"},
    ]
    assert [m.id for m in messages] == [
        f"{first}/{welcome['epoch']}",
        f"{second}/{welcome['epoch']}",
    ]
    assert [m.name for m in messages] == ["message", "message"]  # `onmessage` gets them


async def test_last_event_id_resumes_after_it_and_wins_over_the_query(client: Client) -> None:
    ids = [await publish(client, "1", n) for n in range(3)]
    first, welcome = await open_stream(client, "1")
    await first.events(3)
    resume = first.parser.last_id
    assert resume == f"{ids[2]}/{welcome['epoch']}"
    first.response.close()
    later = await publish(client, "1", "later")
    # As an EventSource reconnects: the URL it was opened with, and the last id it saw.
    stream, again = await open_stream(
        client, "1", "?last_id=0", headers={**bearer("1"), "Last-Event-ID": resume}
    )
    assert (again["last_id"], again["recovered"]) == (ids[2], True)
    assert await stream.events(1) == [{"id": later, "type": "T", "payload": "later"}]


async def test_a_bare_stream_id_resumes_too_and_a_wrong_epoch_is_a_loss(client: Client) -> None:
    ids = [await publish(client, "1", n) for n in range(2)]
    stream, welcome = await open_stream(
        client, "1", headers={**bearer("1"), "Last-Event-ID": ids[0]}
    )
    assert welcome["recovered"] is True
    assert [e["id"] for e in await stream.events(1)] == ids[1:]
    lost, welcome = await open_stream(
        client, "1", headers={**bearer("1"), "Last-Event-ID": f"{ids[0]}/1"}
    )
    assert welcome["recovered"] is False  # another history than the one the client saw
    assert lost.parser.last_id == f"{ids[0]}/{welcome['epoch']}"  # resumes in the new one


@pytest.mark.parametrize(
    ("header", "code"),
    [("nonsense", "invalid_last_id"), ("1-0/", "invalid_epoch"), ("1-0/x", "invalid_epoch")],
)
async def test_a_bad_last_event_id_is_400(client: Client, header: str, code: str) -> None:
    response = await client.get("/sse/1", headers={**bearer("1"), "Last-Event-ID": header})
    assert response.status == 400
    assert (await response.json())["error"] == code


async def test_tokens_and_rights_are_those_of_sockets(client: Client) -> None:
    assert (await client.get("/sse/1")).status == 401
    assert (await client.get("/sse/2", headers=bearer("1"))).status == 403
    await open_stream(client, "1", f"?token={token('1')}", headers={})
    response = await client.get(
        "/sse/1", headers={"Cookie": f"hub_token={token('1')}", "Origin": "https://evil.example"}
    )
    assert (response.status, (await response.json())["error"]) == (403, "origin_not_allowed")


async def test_a_drain_ends_the_stream_with_a_close_event(client: Client) -> None:
    stream, _ = await open_stream(client, "1")
    last = await publish(client, "1", "x")
    await stream.events(1)
    await client.server.close()
    close = await stream.next()
    assert (close.name, orjson.loads(close.data)) == ("close", {"code": 1001, "reason": last})
    with pytest.raises(EOFError):
        await stream.next()


async def test_an_expiring_token_ends_the_stream_with_4001(client: Client) -> None:
    stream, _ = await open_stream(
        client, "1", headers={"Authorization": f"Bearer {token('1', ttl=1)}"}
    )
    close = await stream.next()
    assert (close.name, orjson.loads(close.data)["code"]) == ("close", 4001)


async def test_an_idle_stream_gets_comments_and_a_client_that_left_is_forgotten(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, sse_keepalive=0.2)
    stream, _ = await open_stream(client, "1")
    async with asyncio.timeout(5):
        while (
            b"\n:\n" not in (data := await stream.response.content.readany()) and data != b":\n\n"
        ):
            pass
    stream.response.close()
    sessions = client.app[SESSIONS]
    await wait_until(lambda: not sessions, what="the session of the client that left to end")


async def test_json_with_line_breaks_is_split_into_data_lines_and_rejoined(
    client: Client, redis_server: RedisServer
) -> None:
    """Another producer may store pretty-printed JSON: an SSE data line cannot hold a line
    break, so it goes as several, which the client joins back into the same JSON."""
    pretty = b'{\n  "a": [1,\r\n 2],\r  "b": "x"\n}'
    redis_server.client().xadd("account:1:log", {"type": "T", "payload": pretty})
    stream, _ = await open_stream(client, "1")
    [event] = await stream.events(1)
    assert event["payload"] == {"a": [1, 2], "b": "x"}


async def test_a_backlog_larger_than_a_batch_arrives_in_order(
    client: Client, redis_server: RedisServer
) -> None:
    ids = publish_many(redis_server.client(), "1", list(range(450)))
    stream, _ = await open_stream(client, "1")
    assert [e["id"] for e in await stream.events(450)] == ids


async def test_http_1_0_gets_the_stream_unchunked(client: Client) -> None:
    """A client (or proxy) speaking HTTP/1.0 cannot take chunks: the stream is plain bytes,
    ended by the close."""
    published = await publish(client, "1", "x")
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /sse/1 HTTP/1.0\r\nAuthorization: Bearer {token('1')}\r\n\r\n".encode())
    parser, messages = Parser(), []
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"chunked" not in head.lower()
        while len(messages) < 2:
            messages += parser.feed(await reader.read(65536))
    assert orjson.loads(messages[1].data)["id"] == published
    writer.close()


@given(st.binary(max_size=200), st.one_of(st.none(), st.from_regex(r"[a-z]{1,8}", fullmatch=True)))
def test_the_parser_reads_back_what_the_encoder_writes(data: bytes, name: str | None) -> None:
    """Round trip: any data, line breaks included (CR, LF, CRLF all read back as LF)."""
    encoded = eventstream.event(
        data, event_id=b"1-0/2", name=None if name is None else name.encode()
    )
    [message] = Parser().feed(encoded)
    expected = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
    assert (message.data, message.id, message.name) == (expected, "1-0/2", name or "message")


@pytest.mark.parametrize("path", ["/sse/1", "/ws/1"])
async def test_a_client_gone_before_the_response_starts_is_forgotten_quietly(
    client: Client, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client leaves while its start position is being pinned: the session is released
    and nothing is logged as a failure (no 500 for a client that simply went away)."""
    from loadlib import raw

    from hub.web.state import REGISTRY, STREAM_STATES

    coalesced = client.app[STREAM_STATES]
    read_states = coalesced._call
    pinning, go_on = asyncio.Event(), asyncio.Event()

    async def slow_states(keys: Any) -> Any:
        pinning.set()
        await go_on.wait()
        return await read_states(keys)

    monkeypatch.setattr(coalesced, "_call", slow_states)
    host, port = client.server.host, client.server.port
    connection = await raw.Connection.open(host, port)
    head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Bearer {token('1')}"]
    if path.startswith("/ws/"):
        head += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
        head += ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
    connection.send(("\r\n".join(head) + "\r\n\r\n").encode())
    await asyncio.wait_for(pinning.wait(), 10)
    await connection.close()
    registry = client.app[REGISTRY]
    server = client.server.runner.server
    await wait_until(
        lambda: all(handler.transport is None for handler in server.connections),
        what="the server to see the connection end",
    )
    with structlog.testing.capture_logs() as logged:
        go_on.set()
        await wait_until(lambda: len(registry) == 0, what="the session to be released")
    assert not [entry for entry in logged if entry["log_level"] in ("error", "critical")]
