"""The aiohttp application: routes, middleware, and the lifecycles of Redis and the notifier."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import hdrs, web

from hub import logs
from hub.aio import Coalesced, consume_result
from hub.config import AuthMode, Settings
from hub.core.admission import Admission
from hub.core.errors import HubError
from hub.core.keys import SINGLE, Layout
from hub.core.origins import OriginPolicy
from hub.core.protocol import CloseCode
from hub.core.registry import Registry
from hub.core.stats import Stats
from hub.engine.notifier import Notifier
from hub.engine.reads import Reader
from hub.engine.session import Session
from hub.redis.embedded import EmbeddedRedis
from hub.redis.store import REDIS_FAILURES, Store, close, connect, layout_of
from hub.web.assets import routes as asset_routes
from hub.web.callers import cors_headers
from hub.web.http import routes as http_routes
from hub.web.metrics import gauges_of
from hub.web.metrics import routes as metrics_routes
from hub.web.responses import json_router_errors
from hub.web.sharedstats import WRITE_EVERY, SharedMetrics
from hub.web.sse import routes as sse_routes
from hub.web.state import (
    ADMISSION,
    NOTIFIERS,
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
from hub.web.ws import routes as ws_routes

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
    layout = await _layout(settings, url)
    cluster = layout.clustered
    pool = connect(
        url,
        pool_size=settings.redis_pool_size,
        socket_timeout=settings.redis_timeout,
        cluster=cluster,
    )
    # The notifiers' own connections: their socket timeout must outlast the BLOCK.
    blocking = connect(
        url,
        pool_size=len(layout.index_shards()),
        socket_timeout=settings.block_ms / 1000 + 10,
        name="hub-notifier",
        cluster=cluster,
    )
    store = Store.configured(pool, settings, layout, app[STATS])
    try:
        await store.check_layout()
    except REDIS_FAILURES as error:
        log.warning("redis_unavailable_at_start", error=str(error))
    except HubError:
        await close(pool)
        await close(blocking)
        raise
    notifiers = [
        Notifier(
            Store.configured(blocking, settings, layout),
            app[REGISTRY],
            shard=shard,
            block_ms=settings.block_ms,
            per_read=settings.index_batch,
            on_doubt=lambda mine: _doubt_positions(app, mine),
            stats=app[STATS],
        )
        for shard in layout.index_shards()
    ]
    for notifier in notifiers:
        try:
            await notifier.start_position()
        except REDIS_FAILURES as error:
            log.warning("redis_unavailable_at_start", shard=notifier.shard, error=str(error))
    app[STORE], app[NOTIFIERS] = store, notifiers
    app[READER] = reader = Reader(store, app[REGISTRY], settings.session_batch, app[STATS])
    app[STREAM_STATES] = stream_states = Coalesced(store.stream_states, MAX_OPENS_PER_COMMAND)
    tasks = {
        asyncio.create_task(notifier.run(), name=f"notifier-{notifier.shard}")
        for notifier in notifiers
    }
    if settings.auth is AuthMode.OFF:
        log.warning("auth_off", detail="HUB_AUTH=off: any client may open any account's socket")
    log.info(
        "hub_started",
        host=settings.host,
        port=settings.port,
        redis="cluster" if cluster else "single",
        index_shards=len(notifiers),
    )
    yield
    for notifier in notifiers:
        notifier.stop()
    for task in tasks:
        task.cancel()
        task.add_done_callback(consume_result)
    # If a cancellation was lost, its loop still ends when its BLOCK does (see `stop`).
    await asyncio.wait(tasks, timeout=settings.block_ms / 1000 + 1)
    await reader.close()
    await stream_states.close()
    await close(blocking)
    await close(pool)


async def _layout(settings: Settings, url: str) -> Layout:
    """The cluster layout when `url` names a Redis Cluster node, else the seed's names.
    (Unreachable at start: a single node is assumed, and said so.)"""
    try:
        return await layout_of(url, settings.index_shards, settings.redis_mode)
    except REDIS_FAILURES as error:
        log.warning(
            "redis_mode_unknown",
            error=str(error),
            detail="Redis did not answer at start: a single node is assumed (set "
            "HUB_REDIS_MODE=cluster or single to say which)",
        )
        return SINGLE


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


def _doubt_positions(app: web.Application, mine: Callable[[str], bool]) -> None:
    """A notifier lost Redis for a while: it may have lost data, so every session of its
    shard checks its position before it delivers more (else events lost would be a silent
    gap)."""
    for session in app[SESSIONS]:
        if mine(session.account):
            session.in_doubt = True


async def _close_sessions(app: web.Application) -> None:
    """Drain: ask every socket to close with 1001 and its last delivered ID."""
    sessions: list[Session] = [*app[SESSIONS]]
    for session in sessions:
        session.stop(CloseCode.GOING_AWAY)
    log.info("draining", sessions=len(sessions))
