"""How a session's bytes reach its client: a WebSocket, or an HTTP event stream (SSE).

The delivery engine (hub/engine/session.py) is the same for both; a wire (the protocol in
hub/engine/wire.py) says how a batch of events, the welcome and a reply look on it, and how it
closes. Each batch is encoded once per wire kind and shared by every session it reaches
(`Batch.shared`).

The one place that writes beneath aiohttp's writers, for a batch that fits under the
transport's high-water mark: one `transport.write` of bytes built once, where aiohttp would
frame (and copy) them again for every socket. What it assumes of aiohttp (pinned in
pyproject.toml; tests/test_ws.py and tests/test_sse.py deliver through both paths):
- WebSocket: a server frame is final, unmasked and uncompressed (`compress=False`), and
  aiohttp's writer keeps no state between frames, so our frames and its own may interleave.
- Event stream: `StreamResponse.prepare` sends the headers at once (`write` would send them
  with the first chunk; the welcome goes through `write`, so they are out before any raw
  write), and the body is chunked (set explicitly; HTTP/1.0 gets it unchunked, ended by the
  close) with no state between chunks, so our chunks and its own may interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import orjson
from aiohttp import WSMsgType, web

from hub.aio import HeldSocket, until_taken
from hub.core import eventstream
from hub.core.frames import text_frame
from hub.core.ids import StreamId
from hub.core.protocol import CloseCode
from hub.engine.reads import Batch
from hub.web.websocket import CLOSE_TIMEOUT, HubWebSocket

SSE_RETRY_MS = (1_000, 5_000)  # an EventSource's reconnect delay, drawn per stream: no herd


class WebSocketWire:
    """A WebSocket: one text frame per event, or one JSON array per batch (`batch=1`)."""

    __slots__ = ("_request", "batched", "ws")

    def __init__(self, request: web.Request, ws: HubWebSocket, *, batched: bool) -> None:
        self._request, self.ws, self.batched = request, ws, batched

    def transport(self) -> asyncio.Transport | None:
        transport = self._request.transport
        if transport is None or transport.is_closing() or self.ws.closed:
            return None
        return transport

    def encode(self, batch: Batch) -> bytes:
        if self.batched:
            return batch.shared("ws-joined", _joined_frame)
        return batch.shared("ws", _frames)

    def pieces(self, batch: Batch) -> list[bytes]:
        return [batch.shared("joined", _joined)] if self.batched else batch.frames

    def welcome(self, welcome: bytes, position: StreamId) -> bytes:
        return welcome

    async def send(self, message: bytes) -> None:
        await self.ws.send_frame(message, WSMsgType.TEXT)

    async def close(self, code: CloseCode, reason: str) -> bool:
        if self.ws.closed:
            return False
        # Bounded, and ends the connection whatever the client does (`HubWebSocket.close`).
        await self.ws.close(code=code, message=reason.encode())
        return True

    def received_close(self) -> int | None:
        return self.ws.close_code


def _joined(batch: Batch) -> bytes:
    return b"[" + b",".join(batch.frames) + b"]"


def _joined_frame(batch: Batch) -> bytes:
    return text_frame(batch.shared("joined", _joined))


def _frames(batch: Batch) -> bytes:
    return b"".join(map(text_frame, batch.frames))


class EventStreamWire:
    """An HTTP response of `text/event-stream`: one SSE event per hub event, each with the id
    `<stream id>/<epoch>`; the close is an `event: close` (the code and reason a socket would
    get) and the end of the response."""

    __slots__ = ("_ending", "_request", "closed", "epoch", "response")

    def __init__(self, request: web.Request, epoch: str) -> None:
        self._request, self.epoch = request, epoch
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            }
        )
        if request.version >= (1, 1):
            self.response.enable_chunked_encoding()
        self.response.force_close()  # the stream is the connection's last response
        self.closed = asyncio.Event()  # set once the close is over
        self._ending = False  # the close has begun: nothing else may be written

    async def prepare(self) -> None:
        await self.response.prepare(self._request)

    def transport(self) -> asyncio.Transport | None:
        transport = self._request.transport
        if transport is None or transport.is_closing() or self._ending:
            return None
        return transport

    def encode(self, batch: Batch) -> bytes:
        chunked = self.response.chunked
        return batch.shared(("sse", self.epoch, chunked), self._encode_whole)

    def _encode_whole(self, batch: Batch) -> bytes:
        body = b"".join(self.pieces(batch))  # the events, encoded once for both
        return _chunk(body) if self.response.chunked else body

    def pieces(self, batch: Batch) -> list[bytes]:
        return batch.shared(("sse-events", self.epoch), self._events)

    def _events(self, batch: Batch) -> list[bytes]:
        return [
            eventstream.event(frame, event_id=eventstream.event_id(entry_id, self.epoch))
            for entry_id, frame in zip(batch.ids, batch.frames, strict=True)
        ]

    def welcome(self, welcome: bytes, position: StreamId) -> bytes:
        """With the position as its id: a reconnect before any event resumes from there."""
        event_id = eventstream.event_id(str(position).encode(), self.epoch)
        return eventstream.retry(random.randint(*SSE_RETRY_MS)) + eventstream.event(
            welcome, name=b"welcome", event_id=event_id
        )

    async def send(self, message: bytes) -> None:
        await self.response.write(message)

    def keep_alive(self) -> bool:
        """Write a comment if nothing is on its way to the client; False once it is gone."""
        transport = self.transport()
        if transport is None:
            return False
        if not transport.get_write_buffer_size():
            comment = eventstream.COMMENT
            transport.write(_chunk(comment) if self.response.chunked else comment)
        return True

    async def close(self, code: CloseCode, reason: str) -> bool:
        """As a socket's close (`HubWebSocket.close`): the client has `CLOSE_TIMEOUT` to take
        what is on its way to it, the close event included, or the connection is reset."""
        transport = self.transport()
        self._ending = True
        if transport is None:
            self.closed.set()
            return False
        held = HeldSocket.of(transport)
        deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT
        try:
            data = orjson.dumps({"code": int(code), "reason": reason})
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                async with asyncio.timeout_at(deadline):
                    await self.response.write(eventstream.event(data, name=b"close"))
                    await self.response.write_eof()
            await until_taken(held, transport, deadline)
        finally:
            self.closed.set()
            if held is not None:
                held.let_go(reset=held.unsent() > 0)
            elif transport.get_write_buffer_size():
                transport.abort()
        return True

    def received_close(self) -> int | None:
        return None  # an event stream's client just goes


def _chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
