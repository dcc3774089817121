"""A minimal event-stream (SSE) client for load generation, as `EventSource` connects: one
HTTP/1.1 GET, a chunked `text/event-stream` body. An asyncio Protocol like `wsclient`, so
that one process drives thousands of streams; events are parsed by the hub's own
`hub.eventstream.Parser`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import orjson

from hub.eventstream import Parser
from loadlib.wsclient import Handshake


class EventStreamClient(asyncio.Protocol):
    """Calls `on_text(data)` for the welcome and every event; `closed` resolves with the code
    of the stream's `close` event (1006 when it ended without one)."""

    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self._head = bytearray()
        self._chunks = bytearray()  # the chunked body, not yet decoded
        self._parser = Parser()
        self._started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._started:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._head[:end]).split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                self._fail(Handshake(status.decode("latin-1")))
                return
            self._started = True
            self.opened.set_result(None)
            data = bytes(self._head[end + 4 :])
        self._chunks += data
        self._dechunk()

    def _dechunk(self) -> None:
        buffer, offset = self._chunks, 0
        while True:
            line_end = buffer.find(b"\r\n", offset)
            if line_end < 0:
                break
            size = int(bytes(buffer[offset:line_end]).split(b";")[0], 16)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            if size:
                for message in self._parser.feed(bytes(buffer[start : start + size])):
                    self._message(message.name, message.data.encode())
            offset = start + size + 2
        del buffer[:offset]

    def _message(self, name: str, data: bytes) -> None:
        if name == "close":
            if not self.closed.done():
                self.closed.set_result(int(orjson.loads(data)["code"]))
        else:
            self.on_text(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def shutdown(self, wait: float = 5.0) -> None:
        """Close as a browser leaving a page does: end the connection (an event stream has no
        close handshake)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(1006)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
            if self.transport is not None:
                self.transport.close()


async def connect(
    url: str,
    on_text: Callable[[bytes], None],
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> EventStreamClient:
    """Open an event stream at `url` (http://host:port/sse/...?query)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None  # a loopback address of its own: more ports
    _, client = await loop.create_connection(
        lambda: EventStreamClient(on_text), host, port, local_addr=local
    )
    assert client.transport is not None
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.opened
    return client
