"""One publish, as both HTTP and sockets make it: stored through the store's script, never
cancelled mid-command, counted (events stored, time taken, Redis failures)."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from hub.aio import uncancellable
from hub.core.errors import OutcomeUnknown, Unavailable
from hub.core.stats import Stats
from hub.redis.store import Published, Store


async def publish(
    store: Store,
    stats: Stats,
    via: str,
    account: str,
    event_type: str,
    payload: bytes,
    *,
    key: str | None,
    publisher: str,
) -> Published:
    """Store one event (see `Store.publish` for what each failure means)."""
    started = time.perf_counter()
    try:
        published = await uncancellable(
            store.publish(account, event_type, payload, key=key, publisher=publisher)
        )
    except (Unavailable, OutcomeUnknown, RedisError):
        stats.redis_errors["publish"] += 1
        raise
    stats.publish_seconds.observe(time.perf_counter() - started)
    if not published.replayed:
        stats.published[via] += 1
    return published
