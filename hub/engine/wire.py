"""What the delivery engine needs of the connection to its client: the web side implements it
for a WebSocket and for an event stream (hub/web/wires.py)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from hub.core.ids import StreamId
from hub.core.protocol import CloseCode
from hub.engine.reads import Batch


class Wire(Protocol):
    """What the delivery engine needs of the connection to its client."""

    def transport(self) -> asyncio.Transport | None:
        """The open transport, for writes that cannot wait; None once closing."""
        ...

    def encode(self, batch: Batch) -> bytes:
        """The whole batch as bytes on this wire (shared: built once per batch)."""
        ...

    def pieces(self, batch: Batch) -> list[bytes]:
        """The batch as messages for `send`, one at a time with backpressure."""
        ...

    def welcome(self, welcome: bytes, position: StreamId) -> bytes:
        """The welcome object (delivery starts after `position`) as a message for `send`."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one message; waits while the client does not read."""
        ...

    async def close(self, code: CloseCode, reason: str) -> bool:
        """End the connection within a bounded time, whatever the client does; False when
        it had already ended (nothing was sent)."""
        ...

    def received_close(self) -> int | None:
        """The close code the client sent, if the wire has such a thing (1006: none came)."""
        ...
