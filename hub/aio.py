"""Small helpers for the I/O shell: awaiting Redis safely, backing off."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


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


def consume_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


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
