"""Shared reads: every session of a process reads through here, so that sessions at the same
position share one XREAD, and all the accounts woken together are read in one round trip.

A session may join a read already on its way to Redis only if that read started after the
account's last wake (`Registry.woken_at`): an older read may miss the events of that wake.
Otherwise it asks for a new read, which waits for the end of the current loop iteration so
that every session woken by the same notifier read asks before the reads are sent.

Idle sessions are not even woken: a wake hands them here (`read_for`), the read is made on
their behalf (their signal taken just before it is sent), and the events are written to each
of them when that cannot wait on the client (`Listener.deliver_read`). Any session that cannot
take them so is resumed and reads for itself, with backpressure.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import structlog

from hub.aio import consume_result
from hub.core.cursor import position_lost
from hub.core.events import event_frame
from hub.core.ids import StreamId
from hub.core.registry import Registry, Signal
from hub.core.stats import LAG_BUCKETS, Stats
from hub.redis.store import Store

log = structlog.get_logger(__name__)

Position = tuple[str, StreamId]  # (account, cursor)
T = TypeVar("T")
MAX_CHECKS_PER_COMMAND = 256  # positions one head.lua call checks (Redis waits on it)


@dataclass(slots=True)
class Batch:
    """Up to a read's COUNT of events after one position, each encoded once for every socket."""

    ids: list[bytes]
    frames: list[bytes]  # the event objects, JSON
    full: bool  # COUNT reached: more may follow
    lost: bool  # events after the position were trimmed away unread, or lost by Redis
    verified: bool = False  # the position was checked to be still in the stream (in doubt)
    read_at: float = 0.0  # wall clock, when the read came back
    _shared: dict[Hashable, Any] = field(default_factory=dict, repr=False)
    _last: StreamId | None = field(default=None, repr=False)

    def shared(self, key: Hashable, build: Callable[[Batch], T]) -> T:
        """What `build` makes of the batch, made once for all the sessions it reaches: each
        kind of wire encodes it its own way (hub/web/wires.py), `key` naming the encoding."""
        try:
            return cast(T, self._shared[key])
        except KeyError:
            value = self._shared[key] = build(self)
            return value

    def lag_at_read(self) -> tuple[float, int]:
        """Seconds from the publish of the first event (its ID's time, Redis's clock) to the
        read, and its bucket in `stats.LAG_BUCKETS`: found once for every socket the batch is
        written to as it was read."""
        return self.shared("lag", _lag_at_read)

    def lag_at(self, now: float) -> float:
        """Seconds from the publish of the first event to `now` (a write after a wait)."""
        return max(0.0, now - _first_id_time(self))

    def position_after(self, sent: int) -> StreamId:
        """The cursor after the first `sent` events (the whole batch: parsed once, shared)."""
        if sent < len(self.ids):
            return StreamId.parse(self.ids[sent - 1])
        if self._last is None:
            self._last = StreamId.parse(self.ids[-1])
        return self._last


def _first_id_time(batch: Batch) -> float:
    return int(batch.ids[0].partition(b"-")[0]) / 1000


def _lag_at_read(batch: Batch) -> tuple[float, int]:
    lag = batch.lag_at(batch.read_at)
    return lag, bisect_left(LAG_BUCKETS, lag)


class Listener(Protocol):
    """What the reader needs of a session it reads for."""

    account: str
    cursor: StreamId
    signal: Signal
    epoch: str
    in_doubt: bool  # Redis may have lost data since it last read: check its position first

    def deliver_read(self, cursor: StreamId, batch: Batch) -> bool:
        """Deliver `batch` (read after `cursor`) now if that cannot wait on the client."""
        ...

    def resume(self) -> None:
        """Let the session read for itself."""
        ...


@dataclass(slots=True)
class _Flight:
    started: int
    future: asyncio.Future[Batch]


class Reader:
    """The process's reads of account streams, coalesced and shared (see the module doc)."""

    def __init__(self, store: Store, registry: Registry, count: int, stats: Stats) -> None:
        self._store = store
        self._stats = stats
        self._registry = registry
        self._count = count
        self._pending: dict[Position, asyncio.Future[Batch]] = {}
        self._reads_for: dict[Position, list[Listener]] = {}
        self._doubts: dict[Position, str] = {}  # positions to check, with the epoch expected
        self._flush_scheduled = False
        self._flights: dict[Position, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, account: str, cursor: StreamId, *, doubt: str | None = None) -> Batch:
        """The events after `cursor`; never cancelled mid-flight (the caller may be). With
        `doubt` (the epoch the session knows), the position is first checked to be still in
        the stream: if Redis lost it, the batch is `lost`."""
        position = (account, cursor)
        if doubt is not None:
            self._doubts[position] = doubt
        else:
            flight = self._flights.get(position)
            if flight is not None and flight.started > self._registry.woken_at(account):
                return await asyncio.shield(flight.future)
        return await asyncio.shield(self._pending_read(position))

    def read_for(self, listener: Listener) -> None:
        """Read for an idle session that was just woken, and deliver to it if possible."""
        position = (listener.account, listener.cursor)
        if listener.in_doubt:
            self._doubts[position] = listener.epoch
        self._reads_for.setdefault(position, []).append(listener)
        self._schedule()

    def _pending_read(self, position: Position) -> asyncio.Future[Batch]:
        future = self._pending.get(position)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(consume_result)
            self._pending[position] = future
            self._schedule()
        return future

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        reads_for, self._reads_for = self._reads_for, {}
        for position, listeners in reads_for.items():
            for listener in listeners:
                listener.signal.take()  # just before the read is sent: later wakes are kept
            self._pending_read(position)
        pending, self._pending = self._pending, {}
        doubts, self._doubts = self._doubts, {}
        self._flush_scheduled = False
        started = self._registry.tick()
        for position, future in pending.items():
            if position not in doubts:  # a checked read is no one else's to join
                self._flights[position] = _Flight(started, future)
        task = asyncio.create_task(self._fetch(pending, reads_for, doubts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(
        self,
        pending: dict[Position, asyncio.Future[Batch]],
        reads_for: dict[Position, list[Listener]],
        doubts: dict[Position, str],
    ) -> None:
        await self._read(pending, doubts)
        for position, listeners in reads_for.items():
            future = pending[position]
            batch = None if future.exception() else future.result()
            for listener in listeners:
                try:
                    delivered = batch is not None and listener.deliver_read(position[1], batch)
                except Exception:
                    log.exception("deliver_read_failed", account=position[0])
                    delivered = False
                if not delivered:
                    listener.resume()

    async def _read(
        self, pending: dict[Position, asyncio.Future[Batch]], doubts: dict[Position, str]
    ) -> None:
        try:
            gone = await self._positions_lost(doubts) if doubts else set()
            self._stats.stream_reads += len(pending)
            found = await self._store.read_many(list(pending), self._count)
            full = [p for p, entries in found.items() if len(entries) >= self._count]
            # Only a full read can hide a gap (see `StreamHead.lost_after`).
            heads = await self._store.account_heads([a for a, _ in full]) if full else {}
            read_at = time.time()
            for position, future in pending.items():
                entries = found[position]
                account, cursor = position
                head = heads.get(account)
                future.set_result(
                    Batch(
                        ids=[entry_id for entry_id, _ in entries],
                        frames=[event_frame(i, f) for i, f in entries],
                        full=len(entries) >= self._count,
                        lost=position in gone or (head is not None and head.lost_after(cursor)),
                        verified=position in doubts,
                        read_at=read_at,
                    )
                )
        except Exception as error:
            self._stats.redis_errors["read"] += 1
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)
        finally:
            for position, future in pending.items():
                flight = self._flights.get(position)
                if flight is not None and flight.future is future:
                    del self._flights[position]

    async def _positions_lost(self, doubts: dict[Position, str]) -> set[Position]:
        """Of positions in doubt, those Redis lost (see `cursor.position_lost`)."""
        positions = list(doubts)
        gone = set()
        for start in range(0, len(positions), MAX_CHECKS_PER_COMMAND):
            chunk = positions[start : start + MAX_CHECKS_PER_COMMAND]
            states = await self._store.stream_states(chunk)
            for position, state in zip(chunk, states, strict=True):
                if position_lost(state, position[1], doubts[position]):
                    gone.add(position)
        return gone

    @property
    def idle(self) -> bool:
        """No read waiting or on its way."""
        return not self._pending and not self._tasks

    async def close(self) -> None:
        """Let reads on their way finish (their connections return to the pool clean)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
