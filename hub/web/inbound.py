"""What a socket's client says: `ping`, publishes, token refreshes. Replies are queued on the
session, whose delivery task writes them between batches of events."""

from __future__ import annotations

import time

from aiohttp import WSMsgType

from hub.config import Settings
from hub.core import protocol
from hub.core.admission import TokenBucket
from hub.core.auth import verify
from hub.core.errors import IdempotencyConflict, RequestError, Unauthorized
from hub.core.protocol import Auth, Invalid, Ping, Publish
from hub.core.stats import Stats
from hub.engine import publishing
from hub.engine.session import Session
from hub.redis.store import REDIS_FAILURES, Store
from hub.web.websocket import HubWebSocket


class Inbound:
    """The receive task of one socket."""

    __slots__ = ("_publishes", "_session", "_settings", "_stats", "_store", "_ws")

    def __init__(
        self,
        session: Session,
        ws: HubWebSocket,
        *,
        store: Store,
        settings: Settings,
        stats: Stats,
    ) -> None:
        self._session, self._ws, self._store = session, ws, store
        self._settings, self._stats = settings, stats
        self._publishes: TokenBucket | None = None  # HUB_PUBLISH_RATE, made at the first

    async def receive(self) -> None:
        """Until the socket closes: each message answered in the order it came."""
        session = self._session
        async for message in self._ws:
            if message.type is WSMsgType.ERROR:
                # aiohttp closed the socket for a protocol error (1002, 1007, 1009...).
                # Without a code (a pong that did not come), it sent nothing: 1006.
                session.closed_by_protocol_error(getattr(message.data, "code", None))
                break
            if session.stopping is not None:
                continue  # closing: drain until the close handshake ends the iteration
            if message.type is WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type is WSMsgType.BINARY:
                await session.reply(
                    protocol.error(None, "binary_unsupported", "binary messages are not accepted")
                )

    async def _handle(self, text: str) -> None:
        message = protocol.parse_message(text, sender=self._session.account)
        if isinstance(message, Ping):
            await self._session.reply(protocol.PONG.encode())
        elif isinstance(message, Invalid):
            await self._session.reply(protocol.error(message.ref, message.code, message.message))
        elif isinstance(message, Publish):
            await self._publish(message)
        elif isinstance(message, Auth):
            await self._refresh(message)

    async def _refresh(self, message: Auth) -> None:
        """Take a fresh token for the same account: its expiry and rights replace the old."""
        session, secret = self._session, self._settings.secret
        if session.claims.unrestricted or secret is None:
            await session.reply(protocol.ack(message.ref))  # HUB_AUTH=off: nothing expires
            return
        try:
            claims = verify(message.token, secret, time.time())
        except Unauthorized as error:
            await session.reply(protocol.error(message.ref, error.code, error.message))
            return
        if claims.subject != session.claims.subject:
            await session.reply(
                protocol.error(message.ref, "forbidden", "the token is for another account")
            )
            return
        session.refresh(claims)
        await session.reply(protocol.ack(message.ref))

    def _may_publish_now(self) -> bool:
        rate = self._settings.publish_rate
        if not rate:
            return True
        now = time.monotonic()
        if self._publishes is None:
            self._publishes = TokenBucket(rate, 2 * rate, now)
        return self._publishes.take(now)

    async def _publish(self, message: Publish) -> None:
        session = self._session
        if not self._may_publish_now():
            self._stats.rate_limited += 1
            await session.reply(
                protocol.error(
                    message.ref,
                    "rate_limited",
                    f"more than {self._settings.publish_rate} publishes a second on this socket",
                )
            )
            return
        if not session.claims.may_publish(message.to):
            await session.reply(
                protocol.error(
                    message.ref, "forbidden", f"the token does not allow publishing to {message.to}"
                )
            )
            return
        try:
            published = await publishing.publish(
                self._store,
                self._stats,
                "socket",
                message.to,
                message.type,
                message.payload,
                key=message.key,
                publisher=session.claims.subject or "",
            )
        except RequestError as error:  # 503, 504, 422: the same answers as over HTTP
            if not isinstance(error, IdempotencyConflict):
                session.log.warning("publish_failed", to=message.to, error=error.message)
            await session.reply(protocol.error(message.ref, error.code, error.message))
            return
        except REDIS_FAILURES:  # what Store.publish did not turn into 503 or 504: a failure
            session.log.exception("publish_failed", to=message.to)
            await session.reply(protocol.error(message.ref, "internal", "the publish failed"))
            return
        if message.acknowledge:
            await session.reply(
                protocol.ack(message.ref, published.id, replayed=published.replayed)
            )
