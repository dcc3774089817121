"""WebSocket framing (RFC 6455 5.2) beneath aiohttp's messages. Pure: no I/O.

Two things aiohttp does not do for the hub: build a server frame once for many sockets, and
check that every client frame is masked (5.1: a server must close a connection that sends an
unmasked frame), which means following frame boundaries in the client's byte stream.
"""

from __future__ import annotations

import struct

_LENGTH_16 = 126
_LENGTH_64 = 127
_MASK_BIT = 0x80
_MASK_KEY = 4
_OP_CLOSE = 0x8


def text_frame(payload: bytes) -> bytes:
    """`payload` as a server's WebSocket text frame, the bytes on the wire (RFC 6455 5.2):
    final, unmasked, uncompressed. Identical for every socket, so built once per event."""
    size = len(payload)
    if size < _LENGTH_16:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, _LENGTH_16, size)
    else:
        header = struct.pack("!BBQ", 0x81, _LENGTH_64, size)
    return header + payload


class MaskedFrames:
    """Follows a client's byte stream frame by frame; `feed` says whether all were masked.

    Only headers are looked at: payload bytes are counted and skipped, so the check costs
    little whatever the message size. Once a violation is seen, every later `feed` is False.
    """

    __slots__ = ("_header", "_skip", "_violated", "close_seen")

    def __init__(self) -> None:
        self._header = b""  # the start of a header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._violated = False
        self.close_seen = False  # the client sent a close frame

    def feed(self, data: bytes) -> bool:
        position, end = 0, len(data)
        while position < end and not self._violated:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            header = self._header + data[position : position + 14]
            needed = _header_size(header)
            if needed is None or len(header) < needed:
                self._header = header  # wait for the rest of the header
                return not self._violated
            if not header[1] & _MASK_BIT:
                self._violated = True
                break
            if header[0] & 0x0F == _OP_CLOSE:
                self.close_seen = True
            position += needed - len(self._header)
            self._header = b""
            self._skip = _payload_size(header)
        return not self._violated


def _header_size(header: bytes) -> int | None:
    """The header's full size once its first two bytes are known (mask key included)."""
    if len(header) < 2:
        return None
    flag = header[1] & 0x7F
    extended = 2 if flag == _LENGTH_16 else 8 if flag == _LENGTH_64 else 0
    return 2 + extended + (_MASK_KEY if header[1] & _MASK_BIT else 0)


def _payload_size(header: bytes) -> int:
    flag = header[1] & 0x7F
    if flag == _LENGTH_16:
        return int(struct.unpack_from("!H", header, 2)[0])
    if flag == _LENGTH_64:
        return int(struct.unpack_from("!Q", header, 2)[0])
    return flag
