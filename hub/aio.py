"""Small helpers for the I/O shell: awaiting Redis safely, backing off."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from hub.core.frames import MaskedFrames

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


async def uncancellable(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` to its end even if the caller is cancelled, then re-raise.

    A redis-py command cancelled mid-flight can leave its connection dirty, or hand its reply
    to the next caller; letting it finish returns the connection to the pool clean.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await `awaitable` for at most `seconds`; past that raise TimeoutError and let it finish.

    Unlike `asyncio.timeout`, the operation is not cancelled mid-flight (see `uncancellable`)
    and the caller does not wait for it either.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        async with asyncio.timeout(seconds):
            return await asyncio.shield(task)
    except TimeoutError:
        task.add_done_callback(consume_result)
        raise


TCP_CLOSE = 7  # Linux's tcp_states.h: the connection is over (reset, or fully closed)


class HeldSocket:
    """A second descriptor of a connection's socket, taken when the hub starts to close it.

    The connection then ends when the hub lets go, not when the transport closes: a transport
    closes its socket once its own buffer is written, while the kernel may still hold megabytes
    for a client that reads nothing, and keep them, and the connection, for minutes. Holding the
    socket, the hub can see that (`unsent`) and reset the connection instead (`let_go`).
    """

    __slots__ = ("_sock", "_transport")

    def __init__(self, transport: asyncio.Transport, sock: socket.socket) -> None:
        self._transport, self._sock = transport, sock

    @classmethod
    def of(cls, transport: asyncio.Transport) -> HeldSocket | None:
        """Hold the transport's socket; None if it has none (left, or not a real socket)."""
        sock = transport.get_extra_info("socket")
        try:
            return cls(transport, socket.socket(fileno=os.dup(sock.fileno())))
        except (AttributeError, OSError, ValueError):
            return None

    def unsent(self) -> int:
        """Bytes still on their way to the client: in the transport and in the kernel (sent
        but not acknowledged, or not sent yet; Linux's TIOCOUTQ). Nothing once the client reset
        the connection (a browser leaving a page does): 0, what is left will never be taken."""
        if self._reset_by_peer():
            return 0
        buffered = self._transport.get_write_buffer_size()
        try:
            queued = fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return buffered
        return buffered + int(struct.unpack("i", queued)[0])

    def _reset_by_peer(self) -> bool:
        """Whether the connection is closed for good (Linux TCP state CLOSE): the kernel may
        still count bytes as queued, but no one will take them."""
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        except OSError:
            return False
        return info[0] == TCP_CLOSE

    async def drain(self, frames: MaskedFrames, deadline: float) -> None:
        """Read and drop what the client sends, until its close frame (`frames` follows the
        byte stream), its end, or `deadline`: then nothing unread makes the close a reset."""
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        while not frames.close_seen:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await loop.sock_recv(self._sock, 65536)
            except (TimeoutError, OSError):
                return
            if not data:
                return
            frames.feed(data)

    def let_go(self, *, reset: bool) -> None:
        """End the hub's hold; with `reset`, drop the connection at once with a TCP reset,
        discarding whatever the client has not taken (a zero linger time)."""
        if reset:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()
        self._sock.close()


async def until_taken(
    held: HeldSocket | None, transport: asyncio.Transport, deadline: float
) -> None:
    """Wait until the client has taken all that is on its way to it, or `deadline`."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        unsent = held.unsent() if held is not None else transport.get_write_buffer_size()
        if not unsent:
            return
        await asyncio.sleep(0.05)  # nothing signals "taken": aiohttp's drain waiter is broken


def consume_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Coalesced(Generic[K, V]):
    """Calls made while one is in flight wait for it, then go together as the next one.

    `call` maps a list of keys to one value per key, in order. Alone, a call goes at once;
    under a burst, each round trip carries everything that arrived during the previous one.
    The calls run in their own task: a caller cancelled while waiting leaves its group alone,
    so a Redis command is never cancelled mid-flight (see `uncancellable`).
    """

    def __init__(self, call: Callable[[list[K]], Awaitable[list[V]]], limit: int) -> None:
        self._call, self._limit = call, limit
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="coalesced")
        return await future

    async def _run(self) -> None:
        group: list[tuple[K, asyncio.Future[V]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
                try:
                    values = await self._call([key for key, _ in group])
                    if len(values) != len(group):
                        raise RuntimeError(f"{len(values)} values for {len(group)} keys")
                except Exception as error:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), value in zip(group, values, strict=True):
                    if not future.done():
                        future.set_result(value)
        finally:
            self._task = None
            for _, future in [*group, *self._waiting]:
                future.cancel()  # only those still waiting: we are being cancelled
            self._waiting = []

    async def close(self) -> None:
        """Cancel the call in flight, if any, and every caller waiting for one."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class StopSignals:
    """SIGINT and SIGTERM, caught for a clean stop: `wait` returns the first one's number."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._received: list[int] = []
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on, signum)

    def _on(self, signum: int) -> None:
        self._received.append(signum)
        self._stop.set()

    async def wait(self) -> int:
        await self._stop.wait()
        return self._received[0]


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self._base, self._cap, self._attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._base * 2**self._attempt)
        self._attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0
