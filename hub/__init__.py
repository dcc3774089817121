"""hub: real-time, durable, ordered fan-out of events to WebSocket clients on Redis Streams."""

from hub.config import Settings, load_settings
from hub.core.errors import HubError
from hub.core.events import Event
from hub.web.app import create_app

__all__ = ["Event", "HubError", "Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
