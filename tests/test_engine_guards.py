"""Races the delivery engine guards against, each set up exactly, on a real Redis: a read
shared only when it started after the account's last wake, and a notifier that lagged past the
index's trim waking everyone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hub.core.events import encode_payload
from hub.core.ids import ZERO, StreamId
from hub.core.registry import Registry, Signal
from hub.core.stats import Stats
from hub.engine.notifier import Notifier
from hub.engine.reads import Reader
from hub.redis.store import Store, close, connect
from tests.support import RedisServer, wait_until


class GatedStore(Store):
    """A store whose stream reads, once Redis answered, wait for the test to let them return:
    the moment between a read's reply and its delivery, held open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.answered = asyncio.Event()

    async def read_many(self, positions: Any, count: int) -> Any:
        found = await super().read_many(positions, count)
        self.answered.set()
        await self.gate.wait()
        return found


@pytest.fixture
async def redis(single_redis: RedisServer) -> AsyncIterator[Any]:
    single_redis.flushall()
    client = connect(single_redis.url, pool_size=4, socket_timeout=5)
    yield client
    await close(client)


async def test_a_read_answered_before_a_wake_is_not_shared_after_it(redis: Any) -> None:
    """Socket A's read of an account has been answered (nothing new) but not yet delivered
    when an event arrives and wakes the account. Socket B, woken by it, must not join A's
    read, which cannot hold the event: it reads again (`Registry.woken_at`)."""
    store = GatedStore(redis, retention=100, index_retention=100)
    registry = Registry()
    registry.register("acc", Signal())  # the sockets' signals: a wake stamps the account
    registry.register("acc", Signal())
    reader = Reader(store, registry, 10, Stats())
    first = asyncio.create_task(reader.read("acc", ZERO))
    await asyncio.wait_for(store.answered.wait(), 5)

    published = await store.publish("acc", "T", encode_payload(1))
    registry.wake(["acc"])  # as the notifier does on the event's index entry
    second = asyncio.create_task(reader.read("acc", ZERO))
    await asyncio.sleep(0)  # let the second read be asked for (no time passes)
    store.gate.set()

    assert (await first).ids == []
    assert [i.decode() for i in (await second).ids] == [published.id]


class IdleSession:
    """What the reader sees of a parked session it reads for (`reads.Listener`)."""

    def __init__(self, account: str) -> None:
        self.account, self.cursor, self.signal = account, ZERO, Signal()
        self.epoch, self.in_doubt = "", False
        self.delivered: list[list[bytes]] = []

    def deliver_read(self, cursor: StreamId, batch: Any) -> bool:
        self.delivered.append(batch.ids)
        if batch.ids:
            self.cursor = batch.position_after(len(batch.ids))
        return True

    def resume(self) -> None:
        raise AssertionError("a read that could be delivered was handed back")


async def test_a_wake_during_a_read_made_for_an_idle_session_is_kept(redis: Any) -> None:
    """The reader takes an idle session's signal just before it sends the read it makes for
    it: a wake that lands once the read is on its way (its event may be missing from it)
    stays set, so the session reads again (`Reader._flush`)."""
    store = GatedStore(redis, retention=100, index_retention=100)
    registry = Registry()
    session = IdleSession("a")
    registry.register("a", session.signal)
    reader = Reader(store, registry, 10, Stats())
    registry.wake(["a"])
    reader.read_for(session)
    await asyncio.wait_for(store.answered.wait(), 5)  # answered: nothing yet
    await store.publish("a", "T", encode_payload("after the read"))
    registry.wake(["a"])  # the notifier announces it while the read is on its way
    store.gate.set()
    await wait_until(lambda: bool(session.delivered), what="the read's delivery")
    assert session.delivered == [[]]
    assert session.signal.pending  # kept: the session reads again and gets the event


async def test_a_session_cancelled_mid_read_does_not_take_the_shared_read_with_it(
    redis: Any,
) -> None:
    """Reads are shared: by sessions at one position (one future) and by every account read
    in one round trip. A session cancelled while it waits (its server torn down) must leave
    that read alone for the others (`Reader.read`: `asyncio.shield`)."""
    store = GatedStore(redis, retention=100, index_retention=100)
    reader = Reader(store, Registry(), 10, Stats())
    first = await store.publish("a", "T", encode_payload(1))
    other = await store.publish("b", "T", encode_payload(2))
    leaving = asyncio.create_task(reader.read("a", ZERO))
    staying = asyncio.create_task(reader.read("a", ZERO))  # the same position: one future
    elsewhere = asyncio.create_task(reader.read("b", ZERO))  # the same round trip
    await asyncio.wait_for(store.answered.wait(), 5)
    leaving.cancel()
    store.gate.set()
    assert [i.decode() for i in (await staying).ids] == [first.id]
    assert [i.decode() for i in (await elsewhere).ids] == [other.id]
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_notifier_that_lags_past_the_index_trim_wakes_every_account(redis: Any) -> None:
    """The notifier's next entries are not the next ones published: the index was trimmed
    past its position while it lagged, so the accounts of the trimmed entries are unknown.
    It wakes every account rather than guess."""
    store = Store(redis, retention=100, index_retention=10)
    registry = Registry()
    quiet = Signal()
    registry.register("quiet", quiet)
    notifier = Notifier(store, registry, block_ms=100, per_read=10)
    await notifier.start_position()
    await notifier._read_once(in_doubt=True)  # the loop's first read: it wakes everyone
    assert quiet.take()

    await store.publish("quiet", "T", encode_payload("its only event"))
    for n in range(300):  # far past the index's retention: the entry above is trimmed
        await store.publish(f"busy{n}", "T", encode_payload(n))
    index = await store.index_head()
    assert index.lost_after(notifier.position or StreamId(0, 0))

    await notifier._read_once(in_doubt=False)  # one read, as the loop does when not in doubt
    assert quiet.pending
