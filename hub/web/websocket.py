"""The hub's WebSocket response: aiohttp's, with a close that always ends the connection in
bounded time, and every client frame checked to be masked.

Closing: aiohttp's `close` waits, without a deadline, to hand the close frame to a client that
may read nothing; when a timed-out send left its drain waiter cancelled, it raises
`CancelledError` at once; and when it gives up it closes the transport gracefully, which keeps
the connection until the client takes the rest of the buffer, the transport's and the kernel's
behind it — that is, forever. Every close, the hub's and aiohttp's own on a protocol error,
goes through `HubWebSocket.close`: at most `CLOSE_TIMEOUT` for the handshake and for the client
to take what is on its way to it, then a reset (`HeldSocket`).

What it assumes of aiohttp (pinned in pyproject.toml, checked by tests/test_hostile.py):
aiohttp closes through `self.close(code=...)`; `_post_start` creates the message queue as
`self._reader`, then the frame parser as `self._parser`, then hands `self._parser` to the
connection, which calls its `feed_data(data) -> (eof, tail)` and `feed_eof()`; a parser that
meets a protocol error sets a `WebSocketError` on the queue and answers `(True, b"")`, and the
response then closes with that error's code. The mask check does exactly that, with 1002.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_websocket import WebSocketError

from hub.aio import HeldSocket, until_taken
from hub.core.frames import MaskedFrames

CLOSE_TIMEOUT = 5.0  # for the close handshake: longer, and the connection is reset


class _MaskChecked:
    """A frame parser that first checks, on the raw bytes, that every frame is masked.

    It also follows frame boundaries after a protocol error (aiohttp's parser stops there),
    so that the close can wait for the client's close frame: closing while the client still
    sends (the rest of a message too big, say) resets the connection, and a browser then
    reports 1006 instead of the close code it was sent.
    """

    __slots__ = ("_failed", "_parser", "_queue", "frames")

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser, self._queue = parser, queue
        self.frames = MaskedFrames()
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        masked = self.frames.feed(bytes(data))
        if self._failed:
            return False, b""  # keep reading (and dropping) until the client's close
        if not masked:
            self._failed = True
            self._queue.set_exception(
                WebSocketError(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked")
            )
            return False, b""
        result: tuple[bool, bytes] = self._parser.feed_data(data)
        if result[0]:
            self._failed = True  # aiohttp's parser met a protocol error (1009, 1007, ...)
            return False, b""
        return result

    def feed_eof(self) -> None:
        self._parser.feed_eof()


class HubWebSocket(web.WebSocketResponse):
    """`web.WebSocketResponse` with a bounded close and masked client frames only."""

    _transport: asyncio.Transport | None = None
    _frames: MaskedFrames | None = None  # the client's frames, followed past aiohttp's parser

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._transport = request.transport
        return await super().prepare(request)

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        """Close within `CLOSE_TIMEOUT`: the client has until then to take what is on its way
        to it, close frame included, or the connection is reset. (aiohttp may consider a
        close done with all of it still in the kernel.) A cancellation ends the wait early,
        with the same rule: whatever is unsent then is reset."""
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = b"too_large"  # aiohttp's own close gives no reason
        transport = self._transport
        if self.closed or transport is None:
            return await super().close(code=code, message=message, drain=drain)
        held = HeldSocket.of(transport)
        deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    closed = await super().close(code=code, message=message, drain=drain)
            except (TimeoutError, ConnectionResetError):
                closed = True  # a client that reads nothing cannot even take the close frame
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our own task is being cancelled
                # aiohttp's drain waiter, left cancelled by a timed-out send: the close frame
                # is queued all the same, behind what the client has not read yet.
                closed = True
            await until_taken(held, transport, deadline)
            frames = self._frames
            if held is not None and frames is not None and transport.is_closing():
                # aiohttp stopped reading: take in what the client still sends, until its
                # close frame, so that closing does not reset the connection.
                await held.drain(frames, deadline)
        finally:
            # Whatever ended the wait, a cancellation included: what is still unsent now
            # never will be.
            if held is not None:
                held.let_go(reset=held.unsent() > 0)
            elif transport.get_write_buffer_size():
                transport.abort()
        return closed

    @property
    def _parser(self) -> Any:
        return self.__dict__.get("_checked_parser")

    @_parser.setter
    def _parser(self, parser: Any) -> None:
        checked = None if parser is None else _MaskChecked(parser, self._reader)
        self.__dict__["_checked_parser"] = checked
        if checked is not None:  # kept past the parser (aiohttp drops it when closing)
            self._frames = checked.frames
