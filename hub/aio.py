"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

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
