"""The typed keys under which the application keeps its shared objects."""

from __future__ import annotations

from aiohttp import web

from hub.config import Settings
from hub.notifier import Notifier
from hub.reads import Reader
from hub.registry import Registry
from hub.session import Session
from hub.store import Store

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
SESSIONS = web.AppKey[set[Session]]("sessions")
REDIS_URL = web.AppKey("redis_url", str)
STORE = web.AppKey("store", Store)
NOTIFIER = web.AppKey("notifier", Notifier)
READER = web.AppKey("reader", Reader)
