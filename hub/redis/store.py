"""Every Redis command the hub sends: publish, stream state, reads, history, accounts, index."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from importlib.resources import files
from typing import Any, TypeAlias, TypeVar, cast

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hub.config import Settings
from hub.core import keys
from hub.core.cursor import StreamHead, StreamState
from hub.core.errors import (
    EmailTaken,
    IdempotencyConflict,
    LayoutMismatch,
    OutcomeUnknown,
    Unavailable,
)
from hub.core.events import encode_payload, event_frame
from hub.core.ids import MAX_ID, ZERO, StreamId
from hub.core.keys import SINGLE, Layout
from hub.core.stats import Stats

Entry: TypeAlias = tuple[bytes, dict[bytes, bytes]]
"""A raw stream entry as redis-py returns it: (ID, fields)."""
Client: TypeAlias = aioredis.Redis | aioredis.RedisCluster
"""A single node's client (a pool), or a cluster's (a pool per node, following the slots)."""

ACCOUNT_CREATED = "AccountCreated"
MAX_STREAMS_PER_READ = 256
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
"""What a Redis command may raise: catch these, then ask `failure` what it means."""
_UNREACHED = (RedisConnectionError, RedisTimeoutError, OSError)
_REFUSED = (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    NoPermissionError,
    ClusterDownError,
)
_REFUSED_PREFIXES = ("MISCONF", "BUSY", "MASTERDOWN", "NOREPLICAS")
_REDIRECTED = (MovedError, AskError, TryAgainError)
"""A cluster node's answers that nothing ran, since the slot is (being) served elsewhere."""
REDIRECTS = 10
"""Redirections a publish follows before it answers `unavailable` (a slot moved meanwhile)."""
TRY_AGAIN_AFTER = 0.05
"""Seconds before a publish is sent again after TRYAGAIN (its slot's keys are moving)."""
CHECKOUT_TIMEOUT = 10.0
"""Seconds a publish waits for a free connection to a cluster node (as a single node's pool)."""
REPLICAS_FRESH_FOR = 1.0
"""Seconds a primary's count of replicas in sync is trusted (one INFO per primary and
second): a replica lost meanwhile makes publishes wait in vain, answered `outcome_unknown`."""


class Failure(Enum):
    """What a Redis failure means to whoever sent the command. The one place that decides
    whether "Redis is down": every caller asks `failure`."""

    UNREACHED = "unreached"  # no answer: not reached, or the connection broke (retry later)
    REFUSED = "refused"  # Redis answered that it would not run it now: nothing done (retry)
    FAILED = "failed"  # the command ran and failed: a bug, or a key of the wrong type


def failure(error: BaseException) -> Failure | None:
    """How `error` reads as a Redis failure (None: it is not one).

    Refused: loading, out of memory, a replica, persistence failing, another script running,
    a cluster without a primary for the slot or not knowing its slots yet; an error reply
    given before a script's first write, so nothing was stored."""
    if isinstance(error, (*_REFUSED, RedisClusterException)) or (
        isinstance(error, ResponseError) and str(error).startswith(_REFUSED_PREFIXES)
    ):
        return Failure.REFUSED  # first: redis-py's loading error is a connection error
    if isinstance(error, _UNREACHED):
        return Failure.UNREACHED
    if isinstance(error, RedisError):
        return Failure.FAILED
    return None


def unavailable(error: BaseException) -> bool:
    """Whether Redis is away or refusing for now (answer 503, retry later), as opposed to a
    command that failed."""
    return failure(error) in (Failure.UNREACHED, Failure.REFUSED)


log = structlog.get_logger(__name__)


def _script(name: str) -> str:
    return files("hub.redis").joinpath(name).read_text(encoding="utf-8")


PUBLISH_SCRIPT = _script("publish.lua")


_DRIVER_INFO = DriverInfo(lib_version=metadata.version("redis"))
"""redis-py would look its own version up in the installed packages for every connection."""


def connect(
    url: str,
    *,
    pool_size: int,
    socket_timeout: float | None,
    name: str = "hub",
    cluster: bool = False,
) -> Client:
    """A client with every redis-py default that matters spelled out.

    No automatic retries: a retried publish could be stored twice. Stale pooled connections
    (Redis restarted) are detected and replaced by the pool when they are checked out.
    Connections carry `name` so that `CLIENT LIST` shows which are the hub's. A cluster's
    client follows redirections (nothing ran) and rereads the slots after a node failed;
    `pool_size` is then per node.
    """
    tcp_only = {} if url.startswith("unix:") else {"socket_keepalive": True}
    common: dict[str, Any] = {
        "protocol": 2,
        "decode_responses": False,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 0),
        "client_name": name,
        "driver_info": _DRIVER_INFO,
    }
    if cluster:
        # No reloading of every node's connections on repeated MOVED (redis-py's default every
        # 5th): that would cut the publishes in flight to other nodes. A MOVED updates the slot.
        return aioredis.RedisCluster.from_url(
            url, max_connections=pool_size, reinitialize_steps=0, **common
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, **tcp_only, max_connections=pool_size, timeout=10, **common
    )
    return aioredis.Redis(connection_pool=pool)


async def is_cluster(url: str) -> bool:
    """Whether the Redis at `url` runs in cluster mode (`cluster_enabled` of `INFO cluster`).
    Raises the connection's error when it cannot be reached."""
    probe = aioredis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=10, retry=Retry(NoBackoff(), 0)
    )
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def layout_of(url: str, shards: int, mode: str = "auto") -> Layout:
    """The key layout for the Redis at `url`: `shards` index shards on a cluster, else the
    seed's names; `mode` (HUB_REDIS_MODE) `single` or `cluster` says which without asking.
    Raises the connection's error when it must ask and cannot reach it."""
    if mode == "cluster":
        return Layout(shards)
    if mode == "single":
        return SINGLE
    return Layout(shards) if await is_cluster(url) else SINGLE


async def close(client: Client) -> None:
    """Close every connection of `client`. (A cluster's client skips its nodes while it
    means to reread the slots after an error: they are closed here all the same.)"""
    if isinstance(client, aioredis.RedisCluster):
        await client.aclose()
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")
    else:
        await client.aclose(close_connection_pool=True)


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


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
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
    """The hub's Redis operations over one client (a pool, or the notifier's own connection).

    On a cluster every multi-key command stays within one slot: an account's keys and its
    index shard share a hash tag (hub/core/keys.py), and reads of many accounts are grouped by
    shard.
    """

    def __init__(
        self,
        redis: Client,
        *,
        retention: int,
        index_retention: int,
        idempotency_window: int = 300,
        layout: Layout = SINGLE,
        wait_replicas: int = 1,
        wait_timeout_ms: int = 1000,
        stats: Stats | None = None,
    ) -> None:
        self.redis = redis
        self.layout = layout
        self._retention = retention
        self._index_retention = index_retention
        self._idempotency_window = idempotency_window
        self._wait_replicas = wait_replicas if layout.clustered else 0
        self._wait_timeout_ms = wait_timeout_ms
        self._stats = stats or Stats()
        self._replicas: dict[str, tuple[float, int]] = {}  # primary → (checked at, in sync)
        self._pool_size = _pool_size(redis)
        self._gates: dict[str, asyncio.Semaphore] = {}  # node → its free connections
        self._publish = redis.register_script(PUBLISH_SCRIPT)
        self._head = redis.register_script(_script("head.lua"))
        self._release = redis.register_script(_script("release.lua"))

    @classmethod
    def configured(
        cls, redis: Client, settings: Settings, layout: Layout = SINGLE, stats: Stats | None = None
    ) -> Store:
        """A store with the retention, idempotency window and replica wait of `settings`."""
        return cls(
            redis,
            retention=settings.retention,
            index_retention=settings.index_retention,
            idempotency_window=settings.idempotency_window,
            layout=layout,
            wait_replicas=settings.wait_replicas,
            wait_timeout_ms=settings.wait_timeout_ms,
            stats=stats,
        )

    async def ping(self) -> None:
        await self.redis.ping()

    async def check_layout(self, *, record: bool = True) -> None:
        """Record the cluster layout (unless `record` is false), or raise `LayoutMismatch`
        when the data was written with another number of shards (every account would be
        looked for in the wrong place)."""
        if not self.layout.clustered:
            return
        if record:
            await self.redis.set(keys.LAYOUT, self.layout.signature, nx=True)
        found = cast(bytes | None, await self.redis.get(keys.LAYOUT))
        if found is not None and found.decode() != self.layout.signature:
            raise LayoutMismatch(
                f"this cluster holds data written with {found.decode()}, the hub is configured "
                f"with {self.layout.signature} (HUB_INDEX_SHARDS)"
            )

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
        `OutcomeUnknown` when the command was sent and no answer came, or when the cluster
        shard's replicas did not confirm it in time: the event may then be stored, or lost
        in a failover (a retry with a key is safe).
        """
        layout = self.layout
        log_key = layout.account_log(account)
        keys_ = [log_key, layout.index(layout.shard_of(account)), layout.account_epoch(account)]
        args = [account, event_type, payload, self._retention, self._index_retention]
        if key is not None:
            keys_.append(layout.idempotency(account, publisher, key))
            args += [self._idempotency_window, _digest(event_type, payload)]
        command = ("EVALSHA", self._publish.sha, len(keys_), *keys_, *args)
        if isinstance(self.redis, aioredis.Redis):
            reply = await self._publish_on(self.redis.connection_pool, command, replicas=0)
        else:
            reply = await self._publish_in_cluster(log_key, command)
        if not isinstance(reply, list):
            return Published(cast(bytes, reply).decode("ascii"))
        event_id, outcome = reply[0].decode("ascii"), int(reply[1])
        if outcome == _KEY_REUSED:
            raise IdempotencyConflict(
                f"idempotency key already used for event {event_id}, with another type or payload"
            )
        return Published(event_id, replayed=outcome == _REPLAYED)

    async def _publish_in_cluster(self, log_key: str, command: tuple[Any, ...]) -> Any:
        """Run the publish script on the primary of the account's slot, following
        redirections (the slot moved, or is moving: nothing ran)."""
        cluster = cast(aioredis.RedisCluster, self.redis)
        asking: tuple[str, int] | None = None
        for _ in range(REDIRECTS):
            try:
                if asking is not None:
                    node = cluster.get_node(*asking) or _new_node(cluster, *asking)
                else:
                    node = cluster.get_node_from_key(log_key)
            except REDIS_FAILURES as error:  # no node serves the slot
                await _reread_slots(cluster)
                raise Unavailable(f"Redis is unavailable: {error}") from None
            replicas = await self._replicas_to_wait_for(node)
            try:
                pool = _NodePool(node, self._gate(node.name))
                reply = await self._publish_on(pool, command, replicas, asking=asking)
                if self._wait_replicas and not replicas:
                    self._stats.unreplicated += 1  # acknowledged with no replica to wait for
                return reply
            except AskError as error:
                asking = (error.host, int(error.port))
            except TryAgainError:  # the slot's keys are being moved: a moment
                asking = None
                await asyncio.sleep(TRY_AGAIN_AFTER)
            except MovedError:
                asking = None
                await _reread_slots(cluster)
            except Unavailable:
                await _reread_slots(cluster)  # a primary failed: learn who took over
                raise
        raise Unavailable("Redis is unavailable: the account's slot kept moving")

    async def _publish_on(
        self,
        pool: Any,
        command: tuple[Any, ...],
        replicas: int,
        *,
        asking: tuple[str, int] | None = None,
    ) -> Any:
        """Send the publish on one connection of `pool`, then WAIT for `replicas` on it."""
        try:
            # Connected and checked, nothing sent yet: any failure so far is a clean 503.
            connection = await pool.get_connection()
        except REDIS_FAILURES as error:
            raise Unavailable(f"Redis is unavailable: {error}") from None
        try:
            try:
                reply = await _send(connection, command, asking=asking is not None)
            except NoScriptError:  # a script cache emptied by a restart: nothing ran
                await connection.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
                await connection.read_response()
                reply = await _send(connection, command, asking=asking is not None)
            if replicas:
                await self._wait(connection, replicas)
        except _REDIRECTED:
            raise
        except REDIS_FAILURES as error:
            kind = failure(error)
            if kind is Failure.REFUSED:
                raise Unavailable(f"Redis refused the publish: {error}") from None
            if kind is Failure.FAILED:
                raise  # a failing script: a bug, or a key of the wrong type
            await connection.disconnect()  # a late reply must not reach the next caller
            raise OutcomeUnknown(
                f"Redis did not confirm the publish ({error}); it may have been stored"
            ) from None
        finally:
            await pool.release(connection)
        return reply

    async def _wait(self, connection: Any, replicas: int) -> None:
        """WAIT on the publish's own connection (it waits for that client's writes). The
        event is stored by now: whatever goes wrong, its fate is unknown (504), never 503."""
        try:
            await connection.send_command("WAIT", replicas, self._wait_timeout_ms)
            confirmed = int(await connection.read_response())
        except REDIS_FAILURES as error:
            await connection.disconnect()  # a late reply must not reach the next caller
            raise OutcomeUnknown(
                f"stored, but the replicas' confirmation did not come ({error}): a failover "
                "may lose it"
            ) from None
        if confirmed < replicas:
            raise OutcomeUnknown(
                f"stored, but {confirmed} of {replicas} replicas confirmed it within "
                f"{self._wait_timeout_ms} ms: a failover may lose it"
            )

    def _gate(self, node: str) -> asyncio.Semaphore:
        """What a publish waits on for one of the node's connections: the node's pool raises
        at once when it has none free, where a single node's pool waits."""
        gate = self._gates.get(node)
        if gate is None:
            gate = self._gates[node] = asyncio.Semaphore(self._pool_size)
        return gate

    async def _replicas_to_wait_for(self, node: Any) -> int:
        """How many replicas a publish on `node` waits for: HUB_WAIT_REPLICAS, or fewer when
        the primary has fewer in sync (none: written without waiting, logged and counted)."""
        if not self._wait_replicas:
            return 0
        checked_at, in_sync = self._replicas.get(node.name, (0.0, -1))
        if time.monotonic() - checked_at > REPLICAS_FRESH_FOR:
            before = in_sync
            try:
                info = await node.execute_command("INFO", "replication")
            except REDIS_FAILURES:
                return self._wait_replicas  # let the publish meet the failure itself
            in_sync = _replicas_in_sync(info)
            self._replicas[node.name] = (time.monotonic(), in_sync)
            if in_sync == 0 and before != 0:
                log.warning("shard_without_replica", primary=node.name)
        return min(self._wait_replicas, in_sync)

    async def stream_states(self, opens: list[tuple[str, StreamId]]) -> list[StreamState]:
        """For each (account, position): the account's epoch (created if missing), its
        stream's head and whether the stream holds that position, in one atomic command per
        shard."""

        async def heads(group: list[tuple[str, StreamId]]) -> list[StreamState]:
            streams = [
                k
                for a, _ in group
                for k in (self.layout.account_log(a), self.layout.account_epoch(a))
            ]
            positions = ["" if p == ZERO else str(p) for _, p in group]
            replies = await self._head(keys=streams, args=[2, *positions])
            return [_stream_state(reply) for reply in replies]

        return await self._per_shard(opens, lambda opened: opened[0], heads)

    async def account_heads(self, accounts: list[str]) -> dict[str, StreamHead]:
        """The heads of several accounts' streams, in one command per shard."""

        async def heads(group: list[str]) -> list[StreamHead]:
            streams = [self.layout.account_log(a) for a in group]
            replies = await self._head(keys=streams, args=[1])
            return [_stream_state(reply).head for reply in replies]

        found = await self._per_shard(accounts, lambda account: account, heads)
        return dict(zip(accounts, found, strict=True))

    async def _per_shard(
        self,
        items: list[_Item],
        account_of: Callable[[_Item], str],
        run: Callable[[list[_Item]], Awaitable[list[_Result]]],
    ) -> list[_Result]:
        """`run` over `items` grouped by their accounts' shard (concurrently), the results in
        the order of `items`."""
        if not self.layout.clustered:
            return await run(items)
        groups: dict[int, list[int]] = {}
        for n, item in enumerate(items):
            groups.setdefault(self.layout.shard_of(account_of(item)), []).append(n)
        replies = await asyncio.gather(
            *(run([items[n] for n in group]) for group in groups.values())
        )
        results: list[_Result | None] = [None] * len(items)
        for group, reply in zip(groups.values(), replies, strict=True):
            for n, result in zip(group, reply, strict=True):
                results[n] = result
        return cast(list[_Result], results)

    async def index_head(self, shard: int = 0) -> StreamHead:
        (reply,) = await self._head(keys=[self.layout.index(shard)], args=[1])
        return _stream_state(reply).head

    async def read_many(
        self, positions: list[tuple[str, StreamId]], count: int
    ) -> dict[tuple[str, StreamId], list[Entry]]:
        """At most `count` entries after each (account, cursor), in one round trip.

        Positions of distinct accounts of one shard share an XREAD (COUNT applies per stream);
        an account read at several cursors takes one XREAD per cursor, all in one pipeline
        (on a cluster, one per node, sent together).
        """
        rounds: list[tuple[int, dict[str, StreamId]]] = []
        for account, cursor in positions:
            shard = self.layout.shard_of(account)
            for round_shard, streams in rounds:
                if (
                    round_shard == shard
                    and account not in streams
                    and len(streams) < MAX_STREAMS_PER_READ
                ):
                    streams[account] = cursor
                    break
            else:
                rounds.append((shard, {account: cursor}))
        reads: list[dict[Any, Any]] = [
            {self.layout.account_log(a): str(c) for a, c in streams.items()}
            for _, streams in rounds
        ]
        if isinstance(self.redis, aioredis.Redis):
            pipe = self.redis.pipeline(transaction=False)
            for streams_ in reads:
                pipe.xread(streams_, count=count)
            replies = await pipe.execute()
        else:  # one command per round, all sent together, each to its shard's node
            replies = await asyncio.gather(*(self._xread(r, count, None) for r in reads))
        found: dict[tuple[str, StreamId], list[Entry]] = {}
        for (_, streams), reply in zip(rounds, replies, strict=True):
            by_key = dict(reply or [])
            for account, cursor in streams.items():
                key = self.layout.account_log(account).encode()
                found[(account, cursor)] = by_key.get(key, [])
        return found

    async def history(self, account: str, after: StreamId, limit: int) -> list[bytes]:
        """At most `limit` events after `after`, as event frames (JSON objects)."""
        if after == MAX_ID:
            return []  # nothing can follow, and Redis refuses an exclusive range from it
        entries = _listed(
            await self.redis.xrange(
                self.layout.account_log(account), min=f"({after}", max="+", count=limit
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

    async def index_tail(self, shard: int = 0) -> StreamId:
        """The ID of an index shard's newest entry (0-0 when empty): where a notifier starts."""
        entries = _listed(
            await self.redis.xrevrange(self.layout.index(shard), max="+", min="-", count=1)
        )
        return StreamId.parse(entries[0][0]) if entries else ZERO

    async def read_index(
        self, after: StreamId, count: int, block_ms: int | None, shard: int = 0
    ) -> list[Entry]:
        """Index entries after `after`; `block_ms=None` answers at once."""
        reply = await self._xread({self.layout.index(shard): str(after)}, count, block_ms)
        return _entries(reply)

    async def _xread(self, streams: dict[Any, Any], count: int, block_ms: int | None) -> Any:
        """XREAD of streams of one slot. On a cluster it is sent to the node of that slot:
        redis-py would otherwise ask a node where XREAD's keys are (COMMAND GETKEYS) before
        every read, doubling the commands of every read."""
        if isinstance(self.redis, aioredis.Redis):
            return await self.redis.xread(streams, count=count, block=block_ms)
        args: list[Any] = ["COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", *streams, *streams.values()]
        node = self.redis.get_node_from_key(next(iter(streams)))
        return await self.redis.execute_command("XREAD", *args, target_nodes=node)

    def serving(self, shard: int = 0) -> str:
        """The node that serves an index shard now, as far as this client knows ('' on a
        single node): when it changes, a failover or a slot move happened."""
        if not isinstance(self.redis, aioredis.RedisCluster):
            return ""
        try:
            node = self.redis.get_node_from_key(self.layout.index(shard))
        except REDIS_FAILURES:
            return ""
        return node.name if node is not None else ""


async def _send(connection: Any, command: tuple[Any, ...], *, asking: bool) -> Any:
    """One command on `connection`; after an ASK redirection, preceded by ASKING."""
    if not asking:
        await connection.send_command(*command)
        return await connection.read_response()
    await connection.send_packed_command(connection.pack_commands([("ASKING",), command]))
    await connection.read_response()
    return await connection.read_response()


class _NodePool:
    """A cluster node's connections, checked out as from a single node's pool: waiting for a
    free one (up to CHECKOUT_TIMEOUT), connected and checked before anything is sent (a
    connection the node closed meanwhile is replaced, as redis-py's own pool does)."""

    def __init__(self, node: Any, gate: asyncio.Semaphore) -> None:
        self._node = node
        self._gate = gate

    async def get_connection(self) -> Any:
        try:
            async with asyncio.timeout(CHECKOUT_TIMEOUT):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisConnectionError("no free connection to the node") from None
        try:
            connection = self._node.acquire_connection()
        except BaseException:
            self._gate.release()
            raise
        try:
            await connection.connect()
            try:
                if await connection.can_read():
                    raise RedisConnectionError("connection has unread data")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await connection.disconnect()
                await connection.connect()
                if await connection.can_read():
                    raise RedisConnectionError("connection not ready") from None
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        self._node.release(connection)
        self._gate.release()


def _pool_size(redis: Client) -> int:
    if isinstance(redis, aioredis.RedisCluster):
        return int(redis.nodes_manager.connection_kwargs.get("max_connections", 64))
    return 0


def _new_node(cluster: aioredis.RedisCluster, host: str, port: int) -> Any:
    """A node met in an ASK redirection before the slots were read again."""
    from redis.asyncio.cluster import ClusterNode

    kwargs: dict[str, Any] = cluster.get_connection_kwargs()
    node = ClusterNode(host, port, **kwargs)
    cluster.nodes_manager.nodes_cache[node.name] = node
    return node


async def _reread_slots(cluster: aioredis.RedisCluster) -> None:
    """Learn the cluster's slots again (concurrent callers share one read)."""
    try:
        await cluster.nodes_manager.initialize()
    except REDIS_FAILURES as error:
        log.warning("cluster_slots_unknown", error=str(error))


def _replicas_in_sync(info: dict[str, Any]) -> int:
    """The replicas `INFO replication` lists as online."""
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )
