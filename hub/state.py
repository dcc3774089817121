"""The typed keys under which the application keeps its shared objects."""

from __future__ import annotations

from aiohttp import web

from hub.admission import Admission
from hub.aio import Coalesced
from hub.config import Settings
from hub.cursor import StreamState
from hub.ids import StreamId
from hub.notifier import Notifier
from hub.origins import OriginPolicy
from hub.reads import Reader
from hub.registry import Registry
from hub.session import Session
from hub.sharedstats import SharedMetrics
from hub.stats import Stats
from hub.store import Store

SETTINGS = web.AppKey("settings", Settings)
ORIGINS = web.AppKey("origins", OriginPolicy)
REGISTRY = web.AppKey("registry", Registry)
SESSIONS = web.AppKey[set[Session]]("sessions")
ADMISSION = web.AppKey("admission", Admission)
STATS = web.AppKey("stats", Stats)
SHARED_METRICS = web.AppKey("shared_metrics", SharedMetrics)
"""Set in a worker of several: where they all write their numbers (hub/sharedstats.py)."""
REDIS_URL = web.AppKey("redis_url", str)
STORE = web.AppKey("store", Store)
NOTIFIERS = web.AppKey[list[Notifier]]("notifiers")
"""The process's pollers of the index: one, or one per index shard on a Redis Cluster."""
READER = web.AppKey("reader", Reader)
STREAM_STATES = web.AppKey[Coalesced[tuple[str, StreamId], StreamState]]("stream_states")
"""An account's epoch and stream head at a socket's open, and whether the stream holds the
position the client asked for: concurrent opens share one command."""
