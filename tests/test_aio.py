"""The I/O shell's concurrency helpers, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from hub.aio import Coalesced
from tests.support import wait_until


class Doubler:
    """A call that takes its time, remembers its batches, and fails on demand."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def __call__(self, keys: list[int]) -> list[int]:
        self.batches.append(keys)
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("down")
        return [2 * k for k in keys]


async def calls_started(call: Doubler, count: int) -> None:
    """Until `count` batches have reached the call (their callers queued, the call began)."""
    await wait_until(lambda: len(call.batches) == count, timeout=5, what=f"{count} calls")


async def test_a_lone_call_goes_at_once_and_calls_during_it_go_together_next() -> None:
    call = Doubler()
    coalesced = Coalesced(call, limit=100)
    first = asyncio.create_task(coalesced(1))
    await calls_started(call, 1)
    assert call.batches == [[1]]
    later = [asyncio.create_task(coalesced(k)) for k in (2, 3, 4)]
    await wait_until(lambda: len(coalesced._waiting) == 3, timeout=5, what="3 callers queued")
    call.release.set()
    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8]
    assert call.batches == [[1], [2, 3, 4]]


async def test_batches_hold_at_most_the_limit_in_arrival_order() -> None:
    call = Doubler()
    call.release.set()
    coalesced = Coalesced(call, limit=3)
    assert await asyncio.gather(*(coalesced(k) for k in range(8))) == [2 * k for k in range(8)]
    assert call.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]


async def test_a_failure_reaches_every_caller_of_its_batch_and_only_them() -> None:
    call = Doubler()
    coalesced = Coalesced(call, limit=2)
    call.fail_next = True
    tasks = [asyncio.create_task(coalesced(k)) for k in range(4)]
    await calls_started(call, 1)
    call.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ConnectionError, ConnectionError]
    assert results[2:] == [4, 6]


async def test_a_cancelled_caller_leaves_its_batch_alone() -> None:
    call = Doubler()
    coalesced = Coalesced(call, limit=10)
    tasks = [asyncio.create_task(coalesced(k)) for k in range(3)]
    await calls_started(call, 1)
    tasks[1].cancel()
    call.release.set()
    assert await tasks[0] == 0
    assert await tasks[2] == 4
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert call.batches == [[0, 1, 2]]


async def test_close_cancels_the_call_in_flight_and_its_callers() -> None:
    call = Doubler()
    coalesced = Coalesced(call, limit=10)
    waiting = asyncio.create_task(coalesced(1))
    await calls_started(call, 1)
    await coalesced.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    call.release.set()
    assert await coalesced(5) == 10  # usable again
