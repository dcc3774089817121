"""The single poller of a hub process: XREAD BLOCK on the index, wake the accounts it names.

It never dies silently: on any Redis error it backs off, reconnects, continues from its last
index ID (never from `$`), and then wakes every registered account, since whatever happened
during the gap can only be learned from the accounts' own streams. `/readyz` reflects it.

On a Redis Cluster the index is split into shards, each in its own slot, and a blocking XREAD
may only name keys of one slot: a process runs one poller per shard, each continuing from its
own last ID and waking the accounts of its shard, also when another node took its shard over
(a failover or a slot move).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import structlog

from hub.aio import Backoff
from hub.core.ids import StreamId, is_valid_account_id
from hub.core.registry import Registry
from hub.core.stats import Stats
from hub.redis.store import REDIS_FAILURES, Entry, Store

log = structlog.get_logger(__name__)


def accounts_of(entries: Iterable[Entry]) -> set[str]:
    """The valid account IDs named by the index entries of one read."""
    accounts = set()
    for _, fields in entries:
        raw = fields.get(b"account")
        if raw is not None:
            account = raw.decode("utf-8", "replace")
            if is_valid_account_id(account):
                accounts.add(account)
    return accounts


class Notifier:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        block_ms: int,
        per_read: int,
        shard: int = 0,
        clock: Callable[[], float] = time.monotonic,
        on_doubt: Callable[[Callable[[str], bool]], None] | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._stats = stats or Stats()
        self._store = store
        self.shard = shard
        self._shard_label = str(shard)
        self._serving: str | None = None  # the node serving the shard at the last read
        self._registry = registry
        self._block_ms = block_ms
        self._per_read = per_read  # index entries per XREAD
        self._clock = clock
        self._on_doubt = on_doubt
        self.position: StreamId | None = None
        self.last_read_at: float | None = None
        self._stopping = False

    def healthy(self) -> bool:
        """Whether a read completed within the BLOCK timeout plus 5 seconds."""
        if self.last_read_at is None:
            return False
        return self._clock() - self.last_read_at <= self._block_ms / 1000 + 5

    async def start_position(self) -> None:
        """Pin the index position before sessions are accepted, so no event slips between."""
        self.position = await self._store.index_tail(self.shard)
        self.last_read_at = self._clock()  # the index answered: ready, the loop reads next

    def stop(self) -> None:
        """End `run` at its next step. Cancelling its task is not enough on its own: redis-py
        can lose a cancellation that lands mid-command, and the loop would go on forever."""
        self._stopping = True

    async def run(self) -> None:
        backoff = Backoff()
        in_doubt = True  # after a (re)start: read at once, then wake everyone
        failed = False
        while not self._stopping:
            try:
                if self.position is None:
                    await self.start_position()
                await self._read_once(in_doubt=in_doubt)
                if failed:
                    self._stats.notifier_recoveries += 1
                in_doubt = failed = False
                backoff.reset()
            except REDIS_FAILURES as error:
                in_doubt = failed = True
                self._stats.redis_errors["notifier"] += 1
                delay = backoff.next_delay()
                log.warning(
                    "notifier_redis_error",
                    shard=self.shard,
                    error=str(error),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
            except Exception:
                in_doubt = True
                log.exception("notifier_failed")
                await asyncio.sleep(backoff.next_delay())

    def _mine(self, account: str) -> bool:
        """Whether an account's events are announced on this poller's shard."""
        return self._store.layout.shard_of(account) == self.shard

    def _wake_all(self) -> int:
        """Wake every registered account of this shard."""
        return self._registry.wake([a for a in self._registry.accounts() if self._mine(a)])

    async def _read_once(self, *, in_doubt: bool) -> None:
        assert self.position is not None
        before = self.position
        serving = self._store.serving(self.shard)
        if serving != self._serving:
            if self._serving is not None:
                # Another node took the shard over: it may lack what was read from the last.
                log.warning("index_shard_moved", shard=self.shard, to=serving)
                self._stats.shard_moves += 1
            in_doubt = True
            self._serving = serving
        block = None if in_doubt else self._block_ms
        entries = await self._store.read_index(before, self._per_read, block, self.shard)
        self.last_read_at = self._clock()
        self._stats.notifier_reads[self._shard_label] += 1
        self._stats.notifier_batch.observe(len(entries))
        if in_doubt:
            # Redis may have lost data meanwhile: sessions check their positions before they
            # read on (told first, then woken).
            if self._on_doubt is not None:
                self._on_doubt(self._mine)
            woken = self._wake_all()
            log.info("notifier_reading", shard=self.shard, position=str(before), woke=woken)
        if not entries:
            return
        self.position = StreamId.parse(entries[-1][0])
        self._registry.wake(accounts_of(entries))
        # A short read proves nothing was trimmed unread (the index keeps far more than a
        # read's worth). A full one means we lag: if the index was trimmed past where we were,
        # wake everyone rather than guess.
        if len(entries) >= self._per_read and (await self._store.index_head(self.shard)).lost_after(
            before
        ):
            log.warning("notifier_overrun", shard=self.shard, position=str(before))
            self._wake_all()
