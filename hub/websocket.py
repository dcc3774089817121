"""The hub's WebSocket response: aiohttp's, with every client frame checked to be masked.

What it assumes of aiohttp (pinned in pyproject.toml, checked by tests/test_hostile.py):
`WebSocketResponse._post_start` creates the message queue as `self._reader`, then the frame
parser as `self._parser`, then hands `self._parser` to the connection, which calls its
`feed_data(data) -> (eof, tail)` and `feed_eof()`; a parser that meets a protocol error sets
a `WebSocketError` on the queue and answers `(True, b"")`, and the response then closes with
that error's code. The check below does exactly that, with 1002.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

from hub.frames import MaskedFrames


class _MaskChecked:
    """A frame parser that first checks, on the raw bytes, that every frame is masked."""

    __slots__ = ("_check", "_parser", "_queue")

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser, self._queue = parser, queue
        self._check = MaskedFrames()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._check.feed(bytes(data)):
            result: tuple[bool, bytes] = self._parser.feed_data(data)
            return result
        self._queue.set_exception(
            WebSocketError(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked")
        )
        return True, b""

    def feed_eof(self) -> None:
        self._parser.feed_eof()


class HubWebSocket(web.WebSocketResponse):
    """`web.WebSocketResponse` whose frame parser refuses unmasked frames (RFC 6455 5.1)."""

    @property
    def _parser(self) -> Any:
        return self.__dict__.get("_checked_parser")

    @_parser.setter
    def _parser(self, parser: Any) -> None:
        checked = None if parser is None else _MaskChecked(parser, self._reader)
        self.__dict__["_checked_parser"] = checked
