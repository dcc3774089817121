"""`hub migrate`: a single Redis node's accounts copied into a Redis Cluster's layout.

Each account's stream is copied entry by entry with its IDs, then given the source's last
generated ID, entries added and last deleted ID (so that trimming is still told from loss);
its epoch; its idempotency keys, with the time they have left. Then the email reservations
and the account ID sequence (never lowered). Every step starts from what the target already
holds, so a second run copies only what is new: resumable, and harmless once done. The index
is not copied: hubs on the cluster announce new events, and clients resume from their last
ID in the accounts' streams.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import redis.asyncio as aioredis

from hub.core import keys
from hub.core.errors import HubError
from hub.core.keys import AccountKey, Layout
from hub.redis.store import Store, close, connect, is_cluster

CHUNK = 1000  # entries per read of a source stream, and per pipeline of writes
PARALLEL = 16  # accounts copied at once
SCAN_COUNT = 1000
RAISE_SEQUENCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
"""


@dataclass
class Progress:
    """What was copied so far, and a one-line account of it."""

    accounts: int = 0
    done: int = 0
    events: int = 0
    idempotency_keys: int = 0
    emails: int = 0
    conflicts: int = 0  # email reservations the target holds for another account
    diverged: list[str] = field(default_factory=list)  # accounts written on the target since

    def line(self) -> str:
        share = f" ({100 * self.done // self.accounts}%)" if self.accounts else ""
        bar = _bar(self.done, self.accounts)
        return (
            f"accounts {self.done:,}/{self.accounts:,}{share} {bar} events {self.events:,}"
            f" · idempotency keys {self.idempotency_keys:,} · emails {self.emails:,}"
        )


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Reporter:
    """Progress on `out`: redrawn in place on a terminal (10 times a second at most), a line
    every 5 seconds otherwise; always a last line."""

    def __init__(self, out: TextIO, progress: Progress) -> None:
        self._out, self._progress = out, progress
        self._tty = out.isatty()
        self._last = 0.0

    def update(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self._tty else 5.0):
            return
        self._last = now
        if self._tty:
            self._out.write("\r" + self._progress.line() + ("\n" if final else ""))
        else:
            self._out.write(self._progress.line() + "\n")
        self._out.flush()


class Migration:
    def __init__(self, source: aioredis.Redis, target: aioredis.RedisCluster, layout: Layout):
        self._source, self._target, self._layout = source, target, layout
        self.progress = Progress()

    async def run(self, reporter: Reporter) -> Progress:
        """Copy everything, reporting on the way; what was copied (or found copied)."""
        accounts: dict[str, list[AccountKey]] = {}
        async for name in self._source.scan_iter(match=keys.SEED_ACCOUNT_KEYS, count=SCAN_COUNT):
            key = keys.parse_single(name.decode("utf-8", "surrogateescape"))
            if key is not None:
                accounts.setdefault(key.account, []).append(key)
        self.progress.accounts = len(accounts)
        reporter.update(final=False)
        gate = asyncio.Semaphore(PARALLEL)

        async def copy(found: list[AccountKey]) -> None:
            async with gate:
                await self._copy_account(found)
                self.progress.done += 1
                reporter.update()

        await asyncio.gather(*(copy(found) for found in accounts.values()))
        await self._copy_emails()
        await self._raise_sequence()
        reporter.update(final=True)
        return self.progress

    async def _copy_account(self, found: list[AccountKey]) -> None:
        # The stream before the epoch: a hub on the cluster meeting an epoch without its
        # stream would take the account for lost.
        for key in sorted(found, key=lambda k: ("log", "epoch", "idempotency").index(k.kind)):
            if key.kind == "log":
                await self._copy_stream(key)
            elif key.kind == "epoch":
                value = await self._source.get(_seed_name(key))
                if value is not None:
                    await self._target.set(key.on(self._layout), value)
            else:
                await self._copy_expiring(key)

    async def _copy_stream(self, key: AccountKey) -> None:
        source_name, target_name = _seed_name(key), key.on(self._layout)
        try:
            info = await self._source.xinfo_stream(source_name)
        except aioredis.ResponseError:
            return  # gone meanwhile, or not a stream: nothing of the hub's
        last = _text(info["last-generated-id"])
        copied = await self._target_last(target_name)
        if not await self._came_from_source(source_name, copied, info):
            # Written on the cluster since the cut-over: its history has moved on, and the
            # source's can no longer be merged in order. Left as it is, and reported.
            self.progress.diverged.append(key.account)
            return
        while _id(copied) < _id(last):
            entries = cast(
                list[tuple[bytes, dict[Any, Any]]],
                await self._source.xrange(source_name, min=f"({copied}", max=last, count=CHUNK),
            )
            if not entries:
                break
            pipe = self._target.pipeline()
            for entry_id, fields in entries:
                pipe.xadd(target_name, fields, id=entry_id)
            await pipe.execute()
            copied = _text(entries[-1][0])
            self.progress.events += len(entries)
        if not await self._target.exists(target_name):  # the source holds no entry
            await self._target.xgroup_create(target_name, "hub-migrate", id="$", mkstream=True)
            await self._target.xgroup_destroy(target_name, "hub-migrate")
        # What the source trimmed since an earlier run, the target trims too.
        first = info.get("first-entry")
        if first:
            await self._target.xtrim(target_name, minid=_text(first[0]), approximate=False)
        else:
            await self._target.xtrim(target_name, maxlen=0, approximate=False)
        await self._target.execute_command(
            "XSETID",
            target_name,
            last,
            "ENTRIESADDED",
            info["entries-added"],
            "MAXDELETEDID",
            _text(info["max-deleted-entry-id"]),
        )

    async def _came_from_source(self, name: str, copied: str, info: dict[Any, Any]) -> bool:
        """Whether the target's newest entry `copied` is one the source holds, or held (it
        trimmed it since): else the target was written to on its own."""
        if copied == "0-0":
            return True  # nothing copied yet
        if _id(copied) > _id(_text(info["last-generated-id"])):
            return False
        first = info.get("first-entry")
        if first and _id(copied) < _id(_text(first[0])):
            return True  # trimmed on the source since it was copied
        return bool(await self._source.xrange(name, min=copied, max=copied, count=1))

    async def _target_last(self, name: str) -> str:
        try:
            info = await self._target.xinfo_stream(name)
        except aioredis.ResponseError:  # no such key yet
            return "0-0"
        return _text(info["last-generated-id"])

    async def _copy_expiring(self, key: AccountKey) -> None:
        name = _seed_name(key)
        value, ttl = await self._source.get(name), await self._source.pttl(name)
        if value is None or ttl == -2:
            return  # expired meanwhile
        await self._target.set(key.on(self._layout), value, px=ttl if ttl > 0 else None)
        self.progress.idempotency_keys += 1

    async def _copy_emails(self) -> None:
        async for name in self._source.scan_iter(match=keys.SEED_EMAILS, count=SCAN_COUNT):
            owner = await self._source.get(name)
            if owner is None:
                continue
            if await self._target.set(name, owner, nx=True):
                self.progress.emails += 1
            elif await self._target.get(name) == owner:
                self.progress.emails += 1  # copied by an earlier run
            else:
                self.progress.conflicts += 1

    async def _raise_sequence(self) -> None:
        value = await self._source.get(keys.ACCOUNT_SEQUENCE)
        if value is not None:
            await self._target.eval(RAISE_SEQUENCE, 1, keys.ACCOUNT_SEQUENCE, value)


def _seed_name(key: AccountKey) -> str:
    return key.on(keys.SINGLE)


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def migrate(source_url: str, target_url: str, shards: int, out: TextIO) -> Progress:
    """Copy the deployment at `source_url` (a single node) into the cluster at `target_url`
    with `shards` index shards. Raises HubError when either is not what it must be."""
    if await is_cluster(source_url):
        raise HubError("--from must name a single Redis node (this one runs in cluster mode)")
    if not await is_cluster(target_url):
        raise HubError("--to must name a node of a Redis Cluster (this one is a single node)")
    layout = Layout(shards)
    source = cast(aioredis.Redis, connect(source_url, pool_size=4, socket_timeout=30))
    target = cast(
        aioredis.RedisCluster,
        connect(target_url, pool_size=PARALLEL * 2, socket_timeout=30, cluster=True),
    )
    try:
        await Store(target, retention=0, index_retention=1, layout=layout).check_layout()
        migration = Migration(source, target, layout)
        return await migration.run(Reporter(out, migration.progress))
    finally:
        await close(source)
        await close(target)
