"""The Python client: a hub socket that reconnects, resumes and refreshes its token by itself.

    async with HubClient("ws://127.0.0.1:8080/ws/7", get_token=fetch_token) as client:
        async for event in client:
            handle(event.id, event.type, event.payload)

Every event is yielded once, in stream order, across reconnects (resumed from `last_id` with
`epoch`). When the hub says history was lost (`recovered: false`), `on_reset(welcome)` is
called, or, without it, iteration raises `HistoryLost` once (iterate again to go on). The
client never gives up silently: refusals that retrying cannot fix (4400, 4403) end the
iteration with `HubRefused`. Reconnects back off with full jitter, 0.5 s doubling to 20 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from hub.core.events import JSON, Event
from hub.core.ids import StreamId

SUBPROTOCOL = "hub"
FIRST_DELAY, MAX_DELAY = 0.5, 20.0
REFRESH_BEFORE = 30.0  # seconds before a token's expiry that a fresh one is asked for
_FATAL = {4400, 4403}  # a bad request, a forbidden account: retrying cannot help
_NEW_TOKEN = {4001, 4401}  # expired or invalid: reconnect at once with a fresh token
_HTTP_REFUSALS = {400: 4400, 401: 4401, 403: 4403}  # the same, from an HTTP answer
_ENDS = {
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
}


class HistoryLost(Exception):
    """Events after the client's position are gone (the welcome said `recovered: false`):
    resync from your own source of truth, then iterate again."""

    def __init__(self, welcome: dict[str, Any]) -> None:
        super().__init__(f"history lost after {welcome.get('last_id')}: resync")
        self.welcome = welcome


class HubRefused(Exception):
    """The hub refused the socket for a reason retrying cannot fix (4400, 4403)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused with {code}: {reason}")
        self.code, self.reason = code, reason


def token_expiry(token: str) -> float | None:
    """A JWT's `exp`, read without verifying (the hub verifies it)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


class HubClient:
    """One account's socket, kept open (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        last_id: str | None = None,
        epoch: str | None = None,
        on_reset: Callable[[dict[str, Any]], None] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        refresh_before: float = REFRESH_BEFORE,
        reconnect: bool = True,
        on_frame: Callable[[str], None] | None = None,
    ) -> None:
        """`reconnect=False` (a tool that watches one socket): iteration ends when the socket
        closes, with `close_code` and `close_reason` set; a refused or failed connection
        raises `HubRefused`. `on_frame` sees every text frame the hub sends, control frames
        (welcome, pong, acks, errors) included."""
        self.url = url
        self.last_id = last_id  # of the last event yielded: where a reconnect resumes
        self.epoch = epoch
        self.state = "idle"  # connecting, open, waiting (to reconnect), failed, closed
        self._token, self._get_token = token, get_token
        self._on_reset, self._on_state = on_reset, on_state
        self._refresh_before = refresh_before
        self._reconnect, self._on_frame = reconnect, on_frame
        self.close_code: int | None = None  # of the last socket, once closed
        self.close_reason = ""
        self._queued: StreamId | None = StreamId.parse(last_id) if last_id else None
        self._inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._acks: dict[str, asyncio.Future[str]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._opened = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._welcomed = False  # the last connection got as far as its welcome
        self._finished = asyncio.Event()  # failed or closed: no socket will come

    async def __aenter__(self) -> HubClient:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name="hub-client")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket (1000) and stop reconnecting; iteration then ends."""
        self._set_state("closed")
        self._finished.set()
        self._inbox.put_nowait(StopAsyncIteration())
        if self._refresh is not None:
            self._refresh.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            if isinstance(item, HubRefused | StopAsyncIteration):
                self._inbox.put_nowait(item)  # every later call ends the same way
            raise item
        self.last_id = item.id
        return item

    async def publish(self, to: str, event_type: str, payload: JSON = None) -> str:
        """Publish one event; its ID once stored. Sent again after a reconnect if no ack came,
        with the same idempotency key, so it is stored once."""
        key = uuid.uuid4().hex
        message = {"op": "publish", "to": to, "type": event_type, "payload": payload}
        while True:
            await _first_of(self._opened, self._finished)
            if self._finished.is_set():
                raise ConnectionError(f"the client is {self.state}")
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._acks[key] = future
            ws = self._ws
            try:
                assert ws is not None
                await ws.send_str(_text({**message, "key": key, "ref": key}))
                return await future
            except (ConnectionError, aiohttp.ClientError, _Reconnected):
                continue  # the socket went: once it is back, the same key again
            finally:
                self._acks.pop(key, None)

    async def opened(self) -> bool:
        """Wait until a socket is open (True), or the client has failed or closed (False)."""
        await _first_of(self._opened, self._finished)
        return self._opened.is_set()

    async def send(self, text: str) -> None:
        """Send a raw text message on the open socket (`ping`, `event:<id>`, JSON ops)."""
        await self.opened()
        ws = self._ws
        if ws is None:
            raise ConnectionError(f"the client is {self.state}")
        await ws.send_str(text)

    # --- the connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        fresh_token = False
        while True:
            self._set_state("connecting")
            self._welcomed = False
            try:
                code, reason = await self._connect_once(fresh_token)
            except aiohttp.WSServerHandshakeError as error:  # a client without `hub` support
                code, reason = _HTTP_REFUSALS.get(error.status, 1013), error.message
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                code, reason = 1006, str(error) or type(error).__name__
            self.close_code, self.close_reason = code, reason
            if not self._reconnect:
                if self._welcomed:
                    self._set_state("closed", reason)
                    self._inbox.put_nowait(StopAsyncIteration())
                else:
                    self._set_state("failed", reason)
                    self._inbox.put_nowait(HubRefused(code, reason))
                self._finished.set()
                return
            if self._welcomed:
                attempt = 0
            # A fresh token refused as well is retried with backoff, not in a tight loop.
            refused_again = fresh_token and not self._welcomed
            fresh_token = code in _NEW_TOKEN
            if code in _FATAL or (fresh_token and self._get_token is None):
                self._set_state("failed", reason)
                self._finished.set()
                self._inbox.put_nowait(HubRefused(code, reason))
                return
            if not fresh_token or refused_again:
                delay = random.uniform(0, min(MAX_DELAY, FIRST_DELAY * 2**attempt))
                attempt += 1
                self._set_state("waiting", reason)
                await asyncio.sleep(delay)

    async def _connect_once(self, fresh_token: bool) -> tuple[int, str]:
        """One socket's life: open, take the welcome, read until it closes; the close code
        and reason."""
        assert self._session is not None
        token = await self._current_token(fresh_token)
        protocols = (SUBPROTOCOL, f"bearer.{token}") if token else (SUBPROTOCOL,)
        ws = await self._session.ws_connect(self._resume_url(), protocols=protocols, heartbeat=30)
        try:
            first = await ws.receive()
            if first.type is not aiohttp.WSMsgType.TEXT:
                return _close_of(ws, first)
            if self._on_frame is not None:
                self._on_frame(first.data)
            self._welcome(orjson.loads(first.data))
            self._welcomed = True
            self._ws = ws
            self._opened.set()
            self._set_state("open")
            self._schedule_refresh(token)
            while True:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    if message.type in _ENDS:
                        return _close_of(ws, message)
                    continue
                if self._on_frame is not None:
                    self._on_frame(message.data)
                self._frame(message.data)
        finally:
            self._opened.clear()
            self._ws = None
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(_Reconnected())
            await ws.close()

    def _welcome(self, welcome: dict[str, Any]) -> None:
        self.epoch = welcome.get("epoch")
        if welcome.get("recovered", True):
            return
        # Delivery goes on after the welcome's position: nothing before it will come.
        self._queued = StreamId.parse(welcome["last_id"])
        if self._on_reset is not None:
            self._on_reset(welcome)
        else:
            self._inbox.put_nowait(HistoryLost(welcome))

    def _frame(self, data: str) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # `pong`, the one frame that is not JSON
        if not isinstance(frame, dict | list):
            return
        for item in frame if isinstance(frame, list) else [frame]:
            if "op" not in item:
                self._event(item)
            elif item["op"] in ("ack", "error") and isinstance(item.get("ref"), str):
                future = self._acks.get(item["ref"])
                if future is not None and not future.done():
                    if item["op"] == "ack":
                        future.set_result(item.get("id", ""))
                    else:
                        future.set_exception(PublishFailed(item["code"], item["message"]))

    def _event(self, item: dict[str, Any]) -> None:
        position = StreamId.parse(item["id"])
        if self._queued is not None and position <= self._queued:
            return  # already queued once: never twice
        self._queued = position
        self._inbox.put_nowait(Event(item["id"], item["type"], item["payload"]))

    def _resume_url(self) -> str:
        """The socket URL with the position to resume from (and the epoch it belongs to)."""
        parts = urlsplit(self.url)
        query = dict(parse_qsl(parts.query))
        if self._queued is not None:
            query["last_id"] = str(self._queued)
        if self.epoch is not None:
            query["epoch"] = self.epoch
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _current_token(self, fresh: bool) -> str | None:
        """The token to open with: asked anew when told to, or when it expires soon."""
        expires = token_expiry(self._token) if self._token else None
        stale = expires is not None and expires - time.time() < self._refresh_before
        if self._get_token is not None and (fresh or self._token is None or stale):
            self._token = await self._get_token()
        return self._token

    def _schedule_refresh(self, token: str | None) -> None:
        """Ask for a fresh token before this one expires and hand it to the open socket."""
        if self._refresh is not None:
            self._refresh.cancel()
        expires = token_expiry(token) if token else None
        if expires is None or self._get_token is None:
            return
        delay = max(0.0, expires - self._refresh_before - time.time())
        loop = asyncio.get_running_loop()
        self._refresh = loop.call_later(delay, lambda: loop.create_task(self._send_fresh_token()))

    async def _send_fresh_token(self) -> None:
        ws = self._ws
        if ws is None or self._get_token is None:
            return
        self._token = await self._get_token()
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(_text({"op": "auth", "token": self._token, "ref": None}))
        self._schedule_refresh(self._token)

    def _set_state(self, state: str, reason: str = "") -> None:
        if self.state == "closed":
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(state, reason)


class PublishFailed(Exception):
    """The hub answered a publish with an error frame (`code`, `message`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class _Reconnected(Exception):
    """The socket a publish was sent on went away before its answer."""


def _text(message: dict[str, Any]) -> str:
    """A JSON message as the text frame the hub reads (binary frames are refused)."""
    return orjson.dumps(message).decode()


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _close_of(
    ws: aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage | None
) -> tuple[int, str]:
    if message is not None and message.type is aiohttp.WSMsgType.CLOSE:
        return int(message.data), str(message.extra or "")
    code = ws.close_code
    return (int(code) if code is not None else 1006), ""
