"""A minimal event-stream (SSE) client for load generation, as `EventSource` connects: one
HTTP/1.1 GET, a chunked `text/event-stream` body. An asyncio Protocol like `wsclient`, so
that one process drives thousands of streams; events are parsed by the hub's own
`hub.core.eventstream.Parser`."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from hub.core.eventstream import Parser
from loadlib.wsclient import Handshake, LoadClient, open_client


class EventStreamClient(LoadClient):
    """Calls `on_text(data)` for the welcome and every event; `closed` resolves with the code
    of the stream's `close` event (1006 when it ended without one)."""

    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        super().__init__(on_text)
        self._head = bytearray()
        self._chunks = bytearray()  # the chunked body, not yet decoded
        self._parser = Parser()
        self._started = False

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

    async def shutdown(self, wait: float = 5.0) -> None:
        """Close as a browser leaving a page does: end the connection (an event stream has no
        close handshake)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(
    url: str,
    on_text: Callable[[bytes], None],
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> EventStreamClient:
    """Open an event stream at `url` (http://host:port/sse/...?query)."""
    return await open_client(url, lambda: EventStreamClient(on_text), _request(headers), source)


def _request(headers: dict[str, str] | None) -> Callable[[str, int, str], bytes]:
    def request(host: str, port: int, path: str) -> bytes:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    return request
