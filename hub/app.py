"""The aiohttp application: routes, middleware, and the lifecycles of Redis and the notifier."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from aiohttp import hdrs, web
from redis.exceptions import RedisError

from hub import logs
from hub.admission import Admission
from hub.aio import Coalesced, consume_result
from hub.assets import routes as asset_routes
from hub.config import AuthMode, Settings
from hub.embedded import EmbeddedRedis
from hub.errors import HubError
from hub.http import cors_headers, json_router_errors
from hub.http import routes as http_routes
from hub.metrics import gauges_of
from hub.metrics import routes as metrics_routes
from hub.notifier import Notifier
from hub.origins import OriginPolicy
from hub.protocol import CloseCode
from hub.reads import Reader
from hub.registry import Registry
from hub.session import Session
from hub.sharedstats import WRITE_EVERY, SharedMetrics
from hub.sse import routes as sse_routes
from hub.state import (
    ADMISSION,
    NOTIFIER,
    ORIGINS,
    READER,
    REDIS_URL,
    REGISTRY,
    SESSIONS,
    SETTINGS,
    SHARED_METRICS,
    STATS,
    STORE,
    STREAM_STATES,
)
from hub.stats import Stats
from hub.store import Store, connect
from hub.ws import routes as ws_routes

log = structlog.get_logger(__name__)
MAX_OPENS_PER_COMMAND = 256  # accounts whose heads one script call reads (Redis waits on it)


def create_app(
    settings: Settings, *, redis_url: str | None = None, shared_metrics: Path | None = None
) -> web.Application:
    """The hub as an aiohttp app. Without a Redis URL (argument or settings) it runs its own.
    `shared_metrics`: the directory where the workers of one port add up their numbers."""
    settings.check_serving()
    logs.keep_tokens_out_of_aiohttp_logs()
    app = web.Application(
        client_max_size=max(settings.max_message, 1024),
        # aiohttp closes a connection that sends no complete request for this long, which
        # bounds how long request headers may trickle in (the body has `body_timeout`).
        handler_args={"keepalive_timeout": settings.header_timeout},
    )
    app.on_response_prepare.append(json_router_errors)
    app.on_response_prepare.append(_server_header)
    app.on_response_prepare.append(cors_headers)
    app[SETTINGS] = settings
    app[ORIGINS] = OriginPolicy(settings.allowed_origins)
    app[REGISTRY] = Registry()
    app[SESSIONS] = set()
    app[STATS] = Stats()
    app[ADMISSION] = Admission(
        max_sockets=socket_limit(settings),
        max_accept_rate=settings.max_accept_rate,
        max_per_account=settings.max_sockets_per_account,
        now=time.monotonic(),
    )
    url = redis_url or settings.redis_url
    if url is None:
        app.cleanup_ctx.append(_embedded_redis)
    else:
        app[REDIS_URL] = url
    app.cleanup_ctx.append(_redis_and_notifier)
    if shared_metrics is not None:
        app[SHARED_METRICS] = SharedMetrics(shared_metrics)
        app.cleanup_ctx.append(_share_metrics)
    app.on_shutdown.append(_close_sessions)
    app.add_routes(http_routes)
    app.add_routes(ws_routes)
    app.add_routes(sse_routes)
    app.add_routes(asset_routes)
    app.add_routes(metrics_routes)
    return app


def socket_limit(settings: Settings) -> int:
    """HUB_MAX_SOCKETS, by default 90% of the open-file limit (0: no limit)."""
    if settings.max_sockets is not None:
        return settings.max_sockets
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else int(soft * 0.9)


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    """Name the hub, not the versions of Python and aiohttp it runs on."""
    response.headers[hdrs.SERVER] = "hub"


async def _embedded_redis(app: web.Application) -> AsyncIterator[None]:
    redis = EmbeddedRedis(app[SETTINGS].data_dir)
    await redis.start()
    app[REDIS_URL] = redis.url
    supervisor = asyncio.create_task(redis.supervise(), name="embedded-redis")
    yield
    supervisor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await supervisor
    await redis.stop()


async def _redis_and_notifier(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    url = app[REDIS_URL]
    pool = connect(url, pool_size=settings.redis_pool_size, socket_timeout=settings.redis_timeout)
    # The notifier's own connection: its socket timeout must outlast the BLOCK.
    blocking = connect(
        url, pool_size=1, socket_timeout=settings.block_ms / 1000 + 10, name="hub-notifier"
    )
    store = Store.configured(pool, settings)
    await _refuse_a_cluster(store, url, (pool, blocking))
    notifier = Notifier(
        Store.configured(blocking, settings),
        app[REGISTRY],
        block_ms=settings.block_ms,
        batch=settings.index_batch,
        on_doubt=lambda: _doubt_every_position(app),
        stats=app[STATS],
    )
    try:
        await notifier.start_position()
    except (RedisError, OSError) as error:
        log.warning("redis_unavailable_at_start", error=str(error))
    app[STORE], app[NOTIFIER] = store, notifier
    app[READER] = reader = Reader(store, app[REGISTRY], settings.session_batch, app[STATS])
    app[STREAM_STATES] = stream_states = Coalesced(store.stream_states, MAX_OPENS_PER_COMMAND)
    task = asyncio.create_task(notifier.run(), name="notifier")
    if settings.auth is AuthMode.OFF:
        log.warning("auth_off", detail="HUB_AUTH=off: any client may open any account's socket")
    log.info("hub_started", host=settings.host, port=settings.port)
    yield
    notifier.stop()
    task.cancel()
    task.add_done_callback(consume_result)
    # If the cancellation was lost, the loop still ends when its BLOCK does (see `stop`).
    await asyncio.wait({task}, timeout=settings.block_ms / 1000 + 1)
    await reader.close()
    await stream_states.close()
    await blocking.aclose(close_connection_pool=True)
    await pool.aclose(close_connection_pool=True)


async def _share_metrics(app: web.Application) -> AsyncIterator[None]:
    """Write this worker's numbers for the others every second, and once more at the end."""
    shared = app[SHARED_METRICS]

    def write() -> None:
        try:
            shared.write(app[STATS], gauges_of(app[SESSIONS]))
        except OSError as error:  # the others' totals miss ours until the next write
            log.warning("metrics_share_failed", error=str(error))

    async def every_second() -> None:
        while True:
            write()
            await asyncio.sleep(WRITE_EVERY)

    task = asyncio.create_task(every_second(), name="share-metrics")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    write()


async def _refuse_a_cluster(store: Store, url: str, clients: tuple[Any, ...]) -> None:
    """A Redis Cluster node would answer the single-node layout with MOVED and CROSSSLOT
    errors at every turn: say so at start instead. (Unreachable: found out later.)"""
    try:
        cluster = await store.is_cluster()
    except (RedisError, OSError):
        return
    if cluster:
        for client in clients:
            await client.aclose(close_connection_pool=True)
        raise HubError(
            f"REDIS_URL {_without_password(url)} is a Redis Cluster node: this version of the "
            "hub needs a single Redis node (or a primary with replicas)"
        )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.password, "***", 1)))


def _doubt_every_position(app: web.Application) -> None:
    """The notifier lost Redis for a while: it may have lost data, so every session checks
    its position before it delivers more (else events lost would be a silent gap)."""
    for session in app[SESSIONS]:
        session.in_doubt = True


async def _close_sessions(app: web.Application) -> None:
    """Drain: ask every socket to close with 1001 and its last delivered ID."""
    sessions: list[Session] = [*app[SESSIONS]]
    for session in sessions:
        session.stop(CloseCode.GOING_AWAY)
    log.info("draining", sessions=len(sessions))
