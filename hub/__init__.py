"""hub: real-time, durable, ordered fan-out of events to WebSocket clients on Redis Streams."""

from hub.app import create_app
from hub.config import Settings, load_settings
from hub.errors import HubError
from hub.events import Event

__all__ = ["Event", "HubError", "Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
