"""Raw-socket HTTP and WebSocket: bytes exactly as a test or a probe chooses to send them,
malformed ones included, and answers read as they come (shared by scripts/probe.py, the load
generator and tests/test_hostile.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
TCP_STATE_CLOSE, TCP_STATE_CLOSE_WAIT = 7, 8  # Linux tcp_states.h


def client_frame(
    opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True, rsv: int = 0
) -> bytes:
    """A client frame (RFC 6455 5.2), masked as the RFC requires unless told otherwise."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    # XOR with the key repeated, done on big integers: fast for large payloads too.
    key = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
    return header + mask + body


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str] | None) -> bytes:
    """The HTTP request that opens a WebSocket at `path`."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Reply:
    """An HTTP response head and body as they came off the wire."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def is_json_error(self) -> bool:
        """A JSON error body `{"error", "message"}` served as application/json."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return False
        try:
            body = self.json()
        except orjson.JSONDecodeError:
            return False
        return isinstance(body, dict) and {"error", "message"} <= body.keys()


@dataclass
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        return int(struct.unpack("!H", self.payload[:2])[0]) if len(self.payload) >= 2 else 1005

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


class Connection:
    """One TCP connection to the hub, used at the byte level."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, *, receive_buffer: int | None = None) -> Connection:
        """Connect; `receive_buffer` shrinks the kernel's buffer (a client that reads slowly)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes, **options: Any) -> None:
        self.writer.write(client_frame(opcode, payload, **options))

    async def read_reply(self, timeout: float = 10.0) -> Reply:
        """One HTTP response: its head, then a body of Content-Length (or up to EOF)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ", 2)[1])
            if status == 101:
                return Reply(status, headers)
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            else:
                body = await self.reader.read()
            return Reply(status, headers, body)

    async def read_frame(self, timeout: float = 10.0) -> Frame:
        """The next server frame (servers never mask); IncompleteReadError at EOF."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return Frame(first & 0x0F, await self.reader.readexactly(length))

    async def read_close(self, timeout: float = 10.0) -> Frame | None:
        """Skip frames until the close frame; None if the connection ends without one."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    frame = await self.read_frame(timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                if frame.opcode == OP_CLOSE:
                    return frame

    async def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """Whether the hub ends the connection within `timeout` (EOF or reset), reading and
        discarding whatever it still sends."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def tcp_state(self) -> int:
        """The kernel's TCP state of this connection (Linux): it shows a reset or a FIN even
        while this side reads nothing."""
        sock = self.writer.get_extra_info("socket")
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])

    def stop_reading(self) -> None:
        """Read nothing more: the kernel's buffers fill, then the hub's sends block."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again after `stop_reading`."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.resume_reading()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request on its own connection."""
    connection = await Connection.open(host, port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        connection.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await connection.read_reply(timeout)
    finally:
        await connection.close()


async def websocket(
    host: str,
    port: int,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    receive_buffer: int | None = None,
) -> tuple[Connection, Reply]:
    """Send a WebSocket upgrade; the connection, and the hub's answer to it (101 or not)."""
    connection = await Connection.open(host, port, receive_buffer=receive_buffer)
    connection.send(upgrade_request(host, port, path, headers))
    return connection, await connection.read_reply()
