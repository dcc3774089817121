"""A minimal WebSocket client for load generation: an asyncio Protocol, no per-message
coroutines, so that one process can drive many thousands of sockets without becoming the
bottleneck it measures. It speaks just what a hub sends: text frames, ping, close."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit

from loadlib.raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    client_frame,
    upgrade_request,
)


class Handshake(Exception):
    pass


class LoadClient(asyncio.Protocol):
    """What every load client shares: `opened` once the hub accepted it, `closed` with the
    close code it got (1006 when none), `close` to drop it."""

    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(1006)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
            if self.transport is not None:
                self.transport.close()


Client = TypeVar("Client", bound=LoadClient)


async def open_client(
    url: str,
    make: Callable[[], Client],
    request: Callable[[str, int, str], bytes],
    source: str | None = None,
) -> Client:
    """Connect to `url`'s host (from `source`, a loopback address of its own for more
    ports), send `request(host, port, path with query)`, and wait until the hub accepts."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    _, client = await loop.create_connection(make, host, port, local_addr=local)
    assert client.transport is not None
    client.transport.write(request(host, port, path))
    await client.opened
    return client


class WebSocketClient(LoadClient):
    """Calls `on_text(payload)` for every text message; `closed` resolves with the close code."""

    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        super().__init__(on_text)
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._closing = False  # our close frame is sent: the next one is the answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[:end]).split(b"\r\n", 1)[0]
            del self._buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self._fail(Handshake(status.decode("latin-1")))
                return
            self._upgraded = True
            self.opened.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            start = offset + 2
            if length == 126:
                if len(buffer) - start < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - start < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if len(buffer) - start < length:
                break
            payload = bytes(buffer[start : start + length])
            offset = start + length
            self._frame(first & 0x80, first & 0x0F, payload)
        del buffer[:offset]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments.clear()
                self.on_text(message)
        elif opcode == OP_PING:
            self.send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self._closing:
                self.send(OP_CLOSE, payload[:2])
            if not self.closed.done():
                self.closed.set_result(code)
            if self.transport is not None:
                self.transport.close()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    async def shutdown(self, wait: float = 5.0) -> None:
        """Close as a well-behaved client does: a close frame (1000), the hub's answer, then
        the connection; aborted if the answer does not come in time."""
        if self.transport is None or self.transport.is_closing() or self.closed.done():
            return
        self.send(OP_CLOSE, struct.pack("!H", 1000))
        self._closing = True
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), wait)
        except TimeoutError:
            self.close()


async def connect(
    url: str,
    on_text: Callable[[bytes], None],
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> WebSocketClient:
    """Open a WebSocket to `url` (ws://host:port/path?query)."""
    return await open_client(
        url,
        lambda: WebSocketClient(on_text),
        lambda host, port, path: upgrade_request(host, port, path, headers),
        source,
    )
