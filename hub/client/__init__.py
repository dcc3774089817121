"""The hub's clients: the Python client (`hub.client.HubClient`, in `python.py`) and the
browser's module with its demo page (`browser/`, served at `/client.js` and `/demo`)."""

from hub.client.python import HistoryLost, HubClient, HubRefused, PublishFailed, token_expiry

__all__ = ["HistoryLost", "HubClient", "HubRefused", "PublishFailed", "token_expiry"]
