"""The typed keys under which the application keeps its shared objects.

The types are for the type checker only: importing this module imports none of the engine,
the Redis side or the web side it names, so any of them may import it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hub.aio import Coalesced
    from hub.config import Settings
    from hub.core.admission import Admission
    from hub.core.cursor import StreamState
    from hub.core.ids import StreamId
    from hub.core.origins import OriginPolicy
    from hub.core.registry import Registry
    from hub.core.stats import Stats
    from hub.engine.notifier import Notifier
    from hub.engine.reads import Reader
    from hub.engine.session import Session
    from hub.redis.store import Store
    from hub.web.sharedstats import SharedMetrics

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
ORIGINS: web.AppKey[OriginPolicy] = web.AppKey("origins")
REGISTRY: web.AppKey[Registry] = web.AppKey("registry")
SESSIONS: web.AppKey[set[Session]] = web.AppKey("sessions")
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")
STATS: web.AppKey[Stats] = web.AppKey("stats")
SHARED_METRICS: web.AppKey[SharedMetrics] = web.AppKey("shared_metrics")
"""Set in a worker of several: where they all write their numbers (hub/web/sharedstats.py)."""
REDIS_URL: web.AppKey[str] = web.AppKey("redis_url")
STORE: web.AppKey[Store] = web.AppKey("store")
NOTIFIERS: web.AppKey[list[Notifier]] = web.AppKey("notifiers")
"""The process's pollers of the index: one, or one per index shard on a Redis Cluster."""
READER: web.AppKey[Reader] = web.AppKey("reader")
STREAM_STATES: web.AppKey[Coalesced[tuple[str, StreamId], StreamState]] = web.AppKey(
    "stream_states"
)
"""An account's epoch and stream head at a socket's open, and whether the stream holds the
position the client asked for: concurrent opens share one command."""
