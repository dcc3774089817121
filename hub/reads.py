"""Shared reads: every session of a process reads through here, so that sessions at the same
position share one XREAD, and all the accounts woken together are read in one round trip.

A session may join a read already on its way to Redis only if that read started after the
account's last wake (`Registry.woken_at`): an older read may miss the events of that wake.
Otherwise it asks for a new read, which waits for the end of the current loop iteration so
that every session woken by the same notifier batch asks before the reads are sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hub.aio import consume_result
from hub.events import Event
from hub.ids import StreamId
from hub.registry import Registry
from hub.store import Store

Position = tuple[str, StreamId]  # (account, cursor)
FRAME_HEADER = 10  # the most a server's WebSocket frame header takes


@dataclass(slots=True)
class Batch:
    """Up to a read's COUNT of events after one position, each encoded once for every socket."""

    ids: list[bytes]
    frames: list[bytes]
    size: int  # bytes on the wire, frame headers included
    full: bool  # COUNT reached: more may follow
    lost: bool  # events after the position were trimmed away unread
    _joined: bytes | None = field(default=None, repr=False)

    def joined(self) -> bytes:
        """All frames as one JSON array (the opt-in batched frame), built once."""
        if self._joined is None:
            self._joined = b"[" + b",".join(self.frames) + b"]"
        return self._joined

    def position_after(self, sent: int) -> StreamId:
        return StreamId.parse(self.ids[sent - 1])


@dataclass(slots=True)
class _Flight:
    started: int
    future: asyncio.Future[Batch]


class Reader:
    def __init__(self, store: Store, registry: Registry, count: int) -> None:
        self._store = store
        self._registry = registry
        self._count = count
        self._pending: dict[Position, asyncio.Future[Batch]] = {}
        self._flights: dict[Position, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0  # round trips, for tests and metrics

    async def read(self, account: str, cursor: StreamId) -> Batch:
        """The events after `cursor`; never cancelled mid-flight (the caller may be)."""
        position = (account, cursor)
        flight = self._flights.get(position)
        if flight is not None and flight.started > self._registry.woken_at(account):
            return await asyncio.shield(flight.future)
        future = self._pending.get(position)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._pending:
                loop.call_soon(self._flush)
            future = loop.create_future()
            future.add_done_callback(consume_result)
            self._pending[position] = future
        return await asyncio.shield(future)

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        started = self._registry.tick()
        for position, future in pending.items():
            self._flights[position] = _Flight(started, future)
        task = asyncio.create_task(self._fetch(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, pending: dict[Position, asyncio.Future[Batch]]) -> None:
        try:
            self.reads += 1
            found = await self._store.read_many(list(pending), self._count)
            full = [p for p, entries in found.items() if len(entries) >= self._count]
            # Only a full read can hide a gap (see `StreamHead.lost_after`).
            heads = await self._store.account_heads([a for a, _ in full]) if full else {}
            for position, future in pending.items():
                entries = found[position]
                account, cursor = position
                head = heads.get(account)
                frames = [Event.from_entry(i, f).to_frame() for i, f in entries]
                future.set_result(
                    Batch(
                        ids=[entry_id for entry_id, _ in entries],
                        frames=frames,
                        size=sum(len(frame) for frame in frames) + FRAME_HEADER * len(frames),
                        full=len(entries) >= self._count,
                        lost=head is not None and head.lost_after(cursor),
                    )
                )
        except Exception as error:
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)
        finally:
            for position, future in pending.items():
                flight = self._flights.get(position)
                if flight is not None and flight.future is future:
                    del self._flights[position]

    @property
    def idle(self) -> bool:
        """No read waiting or on its way."""
        return not self._pending and not self._tasks

    async def close(self) -> None:
        """Let reads on their way finish (their connections return to the pool clean)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
