"""One subscriber's delivery: its account's events in order, each once, over any wire.

The same engine serves a WebSocket and an event stream (SSE); the wire (hub/web/wires.py) says how
bytes look on each. Two tasks per connection. The delivery task owns the writes: it takes the
wake signal, reads at most a batch after its cursor (through the shared `Reader`), sends with
backpressure, then parks until the next wake. The other task listens to the client: a
socket's messages (hub/web/inbound.py), whose replies it queues for the delivery task, or an event
stream's keep-alive. A backlog waits in Redis, never in memory; a client that stops reading for
`send_timeout` is closed with 4008 and resumes from the ID in the close reason.

One exception to "the delivery task writes": while a session is parked, the reader may write
a batch it read for it (`deliver_read`), but only when the client's buffer is empty and can take the
whole batch, so that the write cannot wait on this client. Otherwise the session is resumed
and sends for itself. Wakes go that way whenever the delivery task is idle: a wake that comes
while it is busy is handed to the reader when it parks, so a steady flow of events does not
keep every socket's task running. A batch that fits under the transport's high-water mark
goes out in one write, framed once for all the sockets it reaches.

The delivery task's phases are explicit (`Phase`), changed in one place (`Session._enter`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from hub.aio import Backoff
from hub.config import Settings
from hub.core import protocol
from hub.core.auth import Claims
from hub.core.cursor import Start
from hub.core.ids import StreamId
from hub.core.protocol import CloseCode
from hub.core.registry import Signal
from hub.core.stats import Stats
from hub.engine.reads import Batch, Reader
from hub.engine.wire import Wire
from hub.redis.store import REDIS_FAILURES

MAX_QUEUED_REPLIES = 64

log = structlog.get_logger(__name__)


class Phase(enum.Enum):
    """Where a session's delivery task is. Transitions (`Session._enter`, the one place that
    changes the phase):

        OPENING --start--> SENDING --park--> PARKED --unpark--> SENDING
        OPENING, SENDING, PARKED --stop--> CLOSING --closed--> CLOSED
    """

    OPENING = "opening"  # the welcome is not sent yet: no delivery task
    SENDING = "sending"  # the delivery task reads, writes and sends replies
    PARKED = "parked"  # the delivery task waits: wakes are handed to the reader
    CLOSING = "closing"  # a close code is decided: the task ends its write and closes
    CLOSED = "closed"  # the delivery task has ended


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.OPENING: frozenset({Phase.SENDING, Phase.CLOSING}),
    Phase.SENDING: frozenset({Phase.PARKED, Phase.CLOSING}),
    Phase.PARKED: frozenset({Phase.SENDING, Phase.CLOSING}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class ReplyQueue:
    """A socket's replies waiting for its delivery task. Bounded: a client that sends faster
    than it reads waits for room (backpressure) instead of growing the hub's memory."""

    __slots__ = ("_closed", "_frames", "_room")

    def __init__(self) -> None:
        self._frames: deque[bytes] = deque()
        self._room: asyncio.Event | None = None  # made when a put first waits
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    async def put(self, frame: bytes) -> bool:
        """Queue `frame`, waiting while the queue is full; False once closed (dropped)."""
        while len(self._frames) >= MAX_QUEUED_REPLIES and not self._closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self._closed:
            return False
        self._frames.append(frame)
        return True

    def take(self) -> bytes:
        """The oldest reply; a put waiting for room goes on."""
        frame = self._frames.popleft()
        if self._room is not None:
            self._room.set()
        return frame

    def close(self) -> None:
        """No more replies: a put waiting for room gives up."""
        self._closed = True
        if self._room is not None:
            self._room.set()


class Session:
    """The state of one subscriber: an account, a cursor, a signal, a phase, its replies.

    Beside the phase, two facts. Whether the reader has a read for us on its way
    (`_handed_off`): it may outlive the parking that asked for it, and while it is out no
    other is asked for (a second read, sent before the first is delivered, would read the
    same events). And whether the reader handed its read back while the task was busy
    (`_read_next`): the task then reads for itself before it parks again, rather than handing
    the wake to the reader once more (replies keeping it busy could make that go on forever).
    """

    __slots__ = (
        "_close_code",
        "_closing_with",
        "_expiry",
        "_failing_since",
        "_handed_off",
        "_phase",
        "_read_backoff",
        "_read_next",
        "_reader",
        "_replies",
        "_settings",
        "_stats",
        "_waiter",
        "_wire",
        "account",
        "claims",
        "conn",
        "cursor",
        "epoch",
        "in_doubt",
        "signal",
        "via",
    )

    def __init__(
        self,
        account: str,
        claims: Claims,
        *,
        reader: Reader,
        settings: Settings,
        stats: Stats,
        conn: str,
        via: str,
    ) -> None:
        self.account = account
        self.claims = claims
        self.cursor = StreamId(0, 0)
        self._reader = reader
        self._stats = stats
        self.via = via  # how the client subscribed: ws, sse
        self._settings = settings
        self.conn = conn
        self.signal = Signal(self._on_wake)
        self._phase = Phase.OPENING
        self._closing_with: CloseCode | None = None  # decided by the first `stop`
        self._close_code: int | None = None  # the code the hub (or aiohttp) sent
        # Memory per socket matters: what only some sockets need is created when needed.
        self._waiter: asyncio.Future[None] | None = None  # the delivery task, parked
        self._handed_off = False  # the reader is reading for us (see `_hand_off`)
        self._read_next = False  # the reader handed a read back while we were busy
        self.epoch = ""  # of the account's history, from the welcome
        # Redis may have lost data since our last read (it failed, or the notifier lost it):
        # the next read first checks that our position is still there.
        self.in_doubt = False
        self._replies: ReplyQueue | None = None
        self._read_backoff: Backoff | None = None
        self._failing_since: float | None = None
        self._expiry: asyncio.TimerHandle | None = None  # the close at the token's expiry
        self._wire: Wire | None = None

    @property
    def log(self) -> Any:
        return log.bind(account=self.account, conn=self.conn)

    @property
    def phase(self) -> Phase:
        return self._phase

    def _enter(self, phase: Phase) -> None:
        """The one place the phase changes; a transition the table does not name is a bug."""
        if phase not in _NEXT[self._phase]:
            moved = f"{self._phase.value} -> {phase.value}"
            raise RuntimeError(f"session {self.conn}: no transition {moved}")
        self._phase = phase

    def _unpark(self) -> None:
        """Resume the delivery task if it is parked (otherwise it looks before parking)."""
        if self._phase is Phase.PARKED:
            self._enter(Phase.SENDING)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _on_wake(self) -> None:
        if self._phase is Phase.PARKED and not self._handed_off:
            self._hand_off()
        # Otherwise the delivery task is busy, or a read for us is on its way: the signal
        # stays set, and goes to the reader when the task parks or that read is delivered.

    def _hand_off(self) -> None:
        """Have the reader read for us and deliver without waking the delivery task."""
        self._handed_off = True
        self._reader.read_for(self)

    def resume(self) -> None:
        """The reader could not deliver what it read for us: read it ourselves."""
        self._handed_off = False
        if self._phase is Phase.SENDING:
            self._read_next = True  # busy: read before parking, not through the reader
        self._unpark()  # first: the wake below then stays with us, not the reader
        self.signal.wake()

    def deliver_read(self, cursor: StreamId, batch: Batch) -> bool:
        """Deliver a batch read on our behalf, if we are still parked at `cursor` and the
        client's buffer can take all of it at once (then the write cannot wait on the client)."""
        self._handed_off = False
        # Parked means no reply is queued either (a queued reply unparks the task).
        if self._phase is not Phase.PARKED or self.cursor != cursor or batch.lost:
            return False
        if self.in_doubt and not batch.verified:
            return False  # read before the doubt: we check our position ourselves
        if batch.verified:
            self.in_doubt = False
        if batch.frames:
            if not self._write_whole(batch, empty=True):
                return False
            self._delivered_at_read(batch)
        if batch.full:
            return False
        if self.signal.pending:
            self._hand_off()  # woken while that read was on its way
        return True

    @property
    def close_code(self) -> int | None:
        """The close code as the client got it: the one the hub (or aiohttp, on a protocol
        error) sent, else the one the client sent (a socket's 1006: none was exchanged)."""
        code = self._close_code or (self._wire.received_close() if self._wire else None)
        return None if code is None else int(code)

    def closed_by_protocol_error(self, code: int | None) -> None:
        """aiohttp closed the socket for a protocol error, with `code` (None: nothing sent)."""
        self._close_code = code

    @property
    def queued_replies(self) -> int:
        return len(self._replies) if self._replies else 0

    @property
    def stopping(self) -> CloseCode | None:
        """The close code the session is closing with, once decided."""
        return self._closing_with

    def stop(self, code: CloseCode) -> None:
        """Ask the delivery task to close the connection with `code` (the first request wins)."""
        if self._phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self._closing_with = code
        parked = self._phase is Phase.PARKED
        self._enter(Phase.CLOSING)
        if parked and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._replies is not None:
            self._replies.close()

    async def run(
        self, wire: Wire, start: Start, epoch: str, listen: Callable[[], Awaitable[None]]
    ) -> None:
        """Serve an opened connection until either side closes it; `listen` follows the
        client meanwhile (its messages, or that it is still there) and returns when it is
        gone or the connection closed."""
        self._wire = wire
        self.cursor = start.cursor
        self.epoch = epoch
        welcome = protocol.welcome(self.account, start.reported, epoch, start.recovered)
        try:
            await wire.send(wire.welcome(welcome, start.reported))
        except ConnectionResetError:
            self.stop(CloseCode.GOING_AWAY)  # gone right after the handshake
            self._enter(Phase.CLOSED)
            return
        self._schedule_expiry()
        if self._phase is Phase.OPENING:  # not stopped meanwhile
            self._enter(Phase.SENDING)
        delivery = asyncio.create_task(
            self._deliver(read_now=start.catch_up), name=f"deliver:{self.account}"
        )
        try:
            await listen()
        except asyncio.CancelledError:
            delivery.cancel()  # the server is being torn down: do not wait for the client
            raise
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            self.stop(CloseCode.GOING_AWAY)
            # The delivery task finishes its read (never cancelled mid-command) and closes.
            await delivery

    def refresh(self, claims: Claims) -> None:
        """A fresh token for the same account: its expiry and rights replace the old."""
        self.claims = claims
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        """Close with 4001 when the token expires (again after each refresh)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.claims.expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.claims.expires_at - time.time())
        self._expiry = loop.call_later(delay, self.stop, CloseCode.TOKEN_EXPIRED)

    # --- the delivery task: the socket's writer (see the module doc: `deliver_read`) ------------

    async def _deliver(self, *, read_now: bool) -> None:
        """`read_now`: catch up first (the stream had entries after the cursor when pinned)."""
        try:
            while self._phase is Phase.SENDING:
                if read_now:
                    self.signal.take()  # before reading: a wake from here on is kept
                    self._read_next = False
                    read_now = await self._read_and_send()
                if self._replies and self._phase is Phase.SENDING:
                    await self._send_replies()  # between batches: a backlog never starves them
                if read_now or self._phase is not Phase.SENDING:
                    continue
                if not (self._replies or self._read_next):
                    # Park until unparked (inline, not a helper: a frame less per socket). A
                    # wake that came while we were busy goes to the reader, as the next ones
                    # will: it reads for us and writes without waking this task.
                    self._enter(Phase.PARKED)
                    if self.signal.pending and not self._handed_off:
                        self._hand_off()
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                read_now = self.signal.pending or self._read_next
        except ConnectionResetError as error:
            self.log.debug("session_client_gone", error=str(error))
        except Exception:
            self.log.exception("session_failed")
            self.stop(CloseCode.INTERNAL_ERROR)
        finally:
            self.stop(CloseCode.GOING_AWAY)  # the client gone, or the task cancelled
            await self._close()
            self._enter(Phase.CLOSED)

    async def _read_and_send(self) -> bool:
        """Read one batch after the cursor and send it; return whether more may be waiting."""
        try:
            doubt = self.epoch if self.in_doubt else None
            batch = await self._reader.read(self.account, self.cursor, doubt=doubt)
        except REDIS_FAILURES as error:
            self._read_failed(error)
            return False
        if batch.verified and not batch.lost:
            self.in_doubt = False
        self._failing_since = None
        self._read_backoff = None
        if batch.lost:
            # Checked before sending: nothing after a gap reaches a client that must resync.
            self.log.info("session_lagged", cursor=str(self.cursor))
            self.stop(CloseCode.LAGGED)
            return False
        if not batch.frames:
            return False
        if self._write_whole(batch):
            self._delivered_at_read(batch)
            return batch.full and self._phase is Phase.SENDING
        assert self._wire is not None
        pieces = self._wire.pieces(batch)
        written = 0
        try:
            async with asyncio.timeout(self._settings.send_timeout):
                for piece in pieces:
                    # aiohttp hands the whole message to the transport before it waits for
                    # the buffer to drain: a send cut short by the timeout still delivers it.
                    written += 1
                    await self._wire.send(piece)
        except TimeoutError:
            self.log.info("session_slow_consumer")
            self.stop(CloseCode.SLOW_CONSUMER)
        finally:
            if written:
                events = written if len(pieces) == len(batch.ids) else len(batch.ids)
                self.cursor = batch.position_after(events)
                lag = batch.lag_at(time.time())
                self._stats.deliver(events, lag, self._stats.delivery_lag.slot(lag))
        return batch.full and self._phase is Phase.SENDING

    def _delivered_at_read(self, batch: Batch) -> None:
        """The whole batch went out as it was read: move the cursor, count the events with
        the batch's lag (and its bucket, found once for every socket it reaches)."""
        self.cursor = batch.position_after(len(batch.ids))
        lag, slot = batch.lag_at_read()
        self._stats.deliver(len(batch.ids), lag, slot)

    def _write_whole(self, batch: Batch, *, empty: bool = False) -> bool:
        """Hand the batch, encoded once for every client on this kind of wire, to the
        transport in one write (one system call for all its events), if it stays under the
        transport's high-water mark: below it the transport never pauses, so nothing waits.
        With `empty`, the buffer must also be empty: a transport paused earlier resumes only
        at its low-water mark, and then even a small send could wait."""
        wire = self._wire
        transport = wire.transport() if wire is not None else None
        if wire is None or transport is None:
            return False
        buffered = transport.get_write_buffer_size()
        if empty and buffered:
            return False
        data = wire.encode(batch)
        _, high = transport.get_write_buffer_limits()
        if buffered + len(data) > high:
            return False
        transport.write(data)
        return True

    def _read_failed(self, error: Exception) -> None:
        self.in_doubt = True
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since > self._settings.read_failure_limit:
            self.log.warning("session_redis_unavailable", error=str(error))
            self.stop(CloseCode.TRY_AGAIN_LATER)
            return
        # Retry by ourselves: the notifier's wake after its own recovery may already be past.
        if self._read_backoff is None:
            self._read_backoff = Backoff(base=0.05, cap=2.0)
        asyncio.get_running_loop().call_later(self._read_backoff.next_delay(), self.signal.wake)

    async def _send_replies(self) -> None:
        assert self._wire is not None
        assert self._replies is not None
        try:
            async with asyncio.timeout(self._settings.send_timeout):
                while self._replies:
                    await self._wire.send(self._replies.take())
        except TimeoutError:
            self.log.info("session_slow_consumer")
            self.stop(CloseCode.SLOW_CONSUMER)

    async def _close(self) -> None:
        wire = self._wire
        if wire is None:
            return
        code = self._closing_with or CloseCode.GOING_AWAY
        # Bounded, and ends the connection whatever the client does.
        if await wire.close(code, str(self.cursor)):
            self._close_code = code

    async def reply(self, frame: bytes) -> None:
        """Queue a reply for the delivery task; wait while the queue is full (backpressure)."""
        if self._closing_with is not None:
            return
        if self._replies is None:
            self._replies = ReplyQueue()
        if await self._replies.put(frame):
            self._unpark()
