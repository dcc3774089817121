"""Every Redis command the hub sends: publish, stream state, reads, history, accounts, index."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from typing import Any, TypeAlias, cast

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hub import keys
from hub.config import Settings
from hub.cursor import StreamHead, StreamState
from hub.errors import EmailTaken, IdempotencyConflict, OutcomeUnknown, Unavailable
from hub.events import encode_payload, event_frame
from hub.ids import MAX_ID, ZERO, StreamId

Entry: TypeAlias = tuple[bytes, dict[bytes, bytes]]
"""A raw stream entry as redis-py returns it: (ID, fields)."""

ACCOUNT_CREATED = "AccountCreated"
MAX_STREAMS_PER_READ = 256
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)
"""Errors meaning Redis did not answer (retry later), as opposed to a command that failed."""
_REFUSED = (BusyLoadingError, OutOfMemoryError, ReadOnlyError, NoPermissionError)
_REFUSED_PREFIXES = ("MISCONF", "BUSY", "MASTERDOWN", "NOREPLICAS")


def _refused(error: Exception) -> bool:
    """An error reply Redis gives before a script's first write (loading, out of memory, a
    replica, persistence failing, another script running): nothing was stored."""
    return isinstance(error, _REFUSED) or (
        isinstance(error, ResponseError) and str(error).startswith(_REFUSED_PREFIXES)
    )


log = structlog.get_logger(__name__)


def _script(name: str) -> str:
    return files("hub").joinpath(name).read_text(encoding="utf-8")


PUBLISH_SCRIPT = _script("publish.lua")


_DRIVER_INFO = DriverInfo(lib_version=metadata.version("redis"))
"""redis-py would look its own version up in the installed packages for every connection."""


def connect(
    url: str, *, pool_size: int, socket_timeout: float | None, name: str = "hub"
) -> aioredis.Redis:
    """A client with every redis-py default that matters spelled out.

    No automatic retries: a retried publish could be stored twice. Stale pooled connections
    (Redis restarted) are detected and replaced by the pool when they are checked out.
    Connections carry `name` so that `CLIENT LIST` shows which are the hub's.
    """
    tcp_only = {} if url.startswith("unix:") else {"socket_keepalive": True}
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **tcp_only,
        max_connections=pool_size,
        timeout=10,
        protocol=2,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=0,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
        driver_info=_DRIVER_INFO,
    )
    return aioredis.Redis(connection_pool=pool)


def _listed(reply: Any) -> list[Entry]:
    """An XRANGE-style reply, typed."""
    return cast(list[Entry], reply or [])


def _stream_state(reply: Any) -> StreamState:
    """One stream of head.lua's reply (the epoch is '' when it was not asked for)."""
    last, first, removed, epoch, holds, max_deleted = reply
    head = StreamHead(
        last_generated=StreamId.parse(last),
        first_retained=StreamId.parse(first) if first else None,
        trimmed=int(removed) > 0,
        max_deleted=StreamId.parse(max_deleted),
    )
    return StreamState(epoch=epoch.decode("ascii"), head=head, holds_position=holds == 1)


def _entries(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD reply (None or [] when there are none)."""
    if not reply:
        return []
    return cast(list[Entry], reply[0][1])


_REPLAYED, _KEY_REUSED = 1, 2  # publish.lua's outcomes with a key (0: stored)


def _digest(event_type: str, payload: bytes) -> str:
    """What an idempotent publish is compared by: its type and payload."""
    return hashlib.sha256(event_type.encode() + b"\0" + payload).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Published:
    """A publish's answer: the event's ID, and whether an earlier publish with the same
    idempotency key had stored it (nothing was stored this time)."""

    id: str
    replayed: bool = False


class Store:
    """The hub's Redis operations over one client (a pool, or the notifier's own connection)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        retention: int,
        index_retention: int,
        idempotency_window: int = 300,
    ) -> None:
        self.redis = redis
        self._retention = retention
        self._index_retention = index_retention
        self._idempotency_window = idempotency_window
        self._publish = redis.register_script(PUBLISH_SCRIPT)
        self._head = redis.register_script(_script("head.lua"))
        self._release = redis.register_script(_script("release.lua"))

    @classmethod
    def configured(cls, redis: aioredis.Redis, settings: Settings) -> Store:
        """A store with the retention and idempotency window of `settings`."""
        return cls(
            redis,
            retention=settings.retention,
            index_retention=settings.index_retention,
            idempotency_window=settings.idempotency_window,
        )

    async def ping(self) -> None:
        await self.redis.ping()

    async def is_cluster(self) -> bool:
        """Whether Redis runs in cluster mode (`cluster_enabled` of `INFO cluster`)."""
        info = await self.redis.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))

    async def publish(
        self,
        account: str,
        event_type: str,
        payload: bytes,
        *,
        key: str | None = None,
        publisher: str = "",
    ) -> Published:
        """Store one event and its index entry atomically.

        `payload` is JSON text (`encode_payload`). With an idempotency `key`, a repeat by the
        same `publisher` within the window stores nothing and answers the first event's ID;
        the key reused for another event raises `IdempotencyConflict`. Raises `Unavailable`
        when the event was certainly not stored (Redis not reached, or refusing writes), and
        `OutcomeUnknown` when the command was sent and no answer came: the event may then be
        stored (a retry with a key is safe).
        """
        keys_ = [keys.account_log(account), keys.INDEX, keys.account_epoch(account)]
        args = [account, event_type, payload, self._retention, self._index_retention]
        if key is not None:
            keys_.append(keys.idempotency(account, publisher, key))
            args += [self._idempotency_window, _digest(event_type, payload)]
        pool = self.redis.connection_pool
        try:
            # Connected and checked, nothing sent yet: any failure so far is a clean 503.
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as error:
            raise Unavailable(f"Redis is unavailable: {error}") from None
        try:
            try:
                reply = await self._evalsha(connection, keys_, args)
            except NoScriptError:  # a script cache emptied by a restart: nothing ran
                await connection.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
                await connection.read_response()
                reply = await self._evalsha(connection, keys_, args)
        except (RedisError, OSError) as error:
            if _refused(error):
                raise Unavailable(f"Redis refused the publish: {error}") from None
            if not isinstance(error, (*UNAVAILABLE, OSError)):
                raise  # a failing script: a bug, or a key of the wrong type
            await connection.disconnect()  # a late reply must not reach the next caller
            raise OutcomeUnknown(
                f"Redis did not confirm the publish ({error}); it may have been stored"
            ) from None
        finally:
            await pool.release(connection)
        if not isinstance(reply, list):
            return Published(cast(bytes, reply).decode("ascii"))
        event_id, outcome = reply[0].decode("ascii"), int(reply[1])
        if outcome == _KEY_REUSED:
            raise IdempotencyConflict(
                f"idempotency key already used for event {event_id}, with another type or payload"
            )
        return Published(event_id, replayed=outcome == _REPLAYED)

    async def _evalsha(self, connection: Any, keys_: list[str], args: list[Any]) -> Any:
        await connection.send_command("EVALSHA", self._publish.sha, len(keys_), *keys_, *args)
        return await connection.read_response()

    async def stream_states(self, opens: list[tuple[str, StreamId]]) -> list[StreamState]:
        """For each (account, position): the account's epoch (created if missing), its
        stream's head and whether the stream holds that position, in one atomic command."""
        streams = [k for a, _ in opens for k in (keys.account_log(a), keys.account_epoch(a))]
        positions = ["" if p == ZERO else str(p) for _, p in opens]
        replies = await self._head(keys=streams, args=[2, *positions])
        return [_stream_state(reply) for reply in replies]

    async def account_heads(self, accounts: list[str]) -> dict[str, StreamHead]:
        """The heads of several accounts' streams, in one command."""
        replies = await self._head(keys=[keys.account_log(a) for a in accounts], args=[1])
        return {
            account: _stream_state(reply).head
            for account, reply in zip(accounts, replies, strict=True)
        }

    async def index_head(self) -> StreamHead:
        (reply,) = await self._head(keys=[keys.INDEX], args=[1])
        return _stream_state(reply).head

    async def read_many(
        self, positions: list[tuple[str, StreamId]], count: int
    ) -> dict[tuple[str, StreamId], list[Entry]]:
        """At most `count` entries after each (account, cursor), in one round trip.

        Positions of distinct accounts share an XREAD (COUNT applies per stream); an account
        read at several cursors takes one XREAD per cursor, all in one pipeline.
        """
        rounds: list[dict[str, StreamId]] = []
        for account, cursor in positions:
            for streams in rounds:
                if account not in streams and len(streams) < MAX_STREAMS_PER_READ:
                    streams[account] = cursor
                    break
            else:
                rounds.append({account: cursor})
        pipe = self.redis.pipeline(transaction=False)
        for streams in rounds:
            pipe.xread({keys.account_log(a): str(c) for a, c in streams.items()}, count=count)
        replies = await pipe.execute()
        found: dict[tuple[str, StreamId], list[Entry]] = {}
        for streams, reply in zip(rounds, replies, strict=True):
            by_key = dict(reply or [])
            for account, cursor in streams.items():
                found[(account, cursor)] = by_key.get(keys.account_log(account).encode(), [])
        return found

    async def history(self, account: str, after: StreamId, limit: int) -> list[bytes]:
        """At most `limit` events after `after`, as event frames (JSON objects)."""
        if after == MAX_ID:
            return []  # nothing can follow, and Redis refuses an exclusive range from it
        entries = _listed(
            await self.redis.xrange(
                keys.account_log(account), min=f"({after}", max="+", count=limit
            )
        )
        return [event_frame(entry_id, fields) for entry_id, fields in entries]

    async def create_account(self, email: str) -> str:
        """The seed's reservation pattern: a new ID, the address reserved, then the event."""
        account = str(await self.redis.incr(keys.ACCOUNT_SEQUENCE))
        if not await self.redis.set(keys.email(email), account, nx=True):
            raise EmailTaken(f"{email} is already taken")
        try:
            await self.publish(account, ACCOUNT_CREATED, encode_payload({"email": email}))
        except OutcomeUnknown:
            raise  # the account may exist: keep its address reserved
        except Exception:
            try:
                await self._release(keys=[keys.email(email)], args=[account])
            except Exception:
                log.error("reservation_not_released", account=account, exc_info=True)
            raise
        return account

    async def index_tail(self) -> StreamId:
        """The ID of the index's newest entry (0-0 when empty): where a notifier starts."""
        entries = _listed(await self.redis.xrevrange(keys.INDEX, max="+", min="-", count=1))
        return StreamId.parse(entries[0][0]) if entries else ZERO

    async def read_index(self, after: StreamId, count: int, block_ms: int | None) -> list[Entry]:
        """Index entries after `after`; `block_ms=None` answers at once."""
        reply = await self.redis.xread({keys.INDEX: str(after)}, count=count, block=block_ms)
        return _entries(reply)
