"""Where a session starts reading, and whether its client lost anything. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from hub.core.errors import BadRequest
from hub.core.ids import ZERO, StreamId, trimmed_past


class From(Enum):
    """What `?last_id=` asked for."""

    START = "0"
    NOW = "$"
    AFTER = "id"


@dataclass(frozen=True, slots=True)
class Requested:
    kind: From
    after: StreamId = ZERO


def parse_last_id(value: str | None) -> Requested:
    """`None` or `0` → the start of the log; `$` → now; an ID → after it; else BadRequest."""
    if value is None or value in ("0", "0-0"):
        return Requested(From.START)
    if value == "$":
        return Requested(From.NOW)
    try:
        return Requested(From.AFTER, StreamId.parse(value))
    except BadRequest:
        raise BadRequest(
            f"invalid last_id {value[:40]!r}: expected 0, $ or a stream ID such as 1700000000000-0",
            code="invalid_last_id",
        ) from None


_EPOCH = re.compile(r"[0-9]{1,32}")


def parse_epoch(value: str | None) -> str | None:
    """`?epoch=`: absent, or the digits of an epoch a welcome gave; else BadRequest."""
    if value is None or value == "":
        return None
    if _EPOCH.fullmatch(value) is None:
        raise BadRequest(
            f"invalid epoch {value[:40]!r}: expected the digits of a welcome's epoch",
            code="invalid_epoch",
        )
    return value


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The start and end of a stream, and whether it ever lost entries to trimming."""

    last_generated: StreamId  # 0-0 when the stream never had an entry
    first_retained: StreamId | None  # None when the stream holds no entry
    trimmed: bool  # whether any entry was ever removed (entries-added > length)
    max_deleted: StreamId = ZERO  # the newest entry removed by XDEL (trimming leaves it alone)

    def should_hold(self, position: StreamId) -> bool:
        """Whether an entry at `position`, if the stream ever had one, is still retained:
        trimming removes only the oldest entries, and nothing that recent was deleted."""
        if self.first_retained is None or position <= self.max_deleted:
            return False
        return position >= self.first_retained or not self.trimmed

    def lost_after(self, position: StreamId) -> bool:
        """Whether an entry after `position` may have been removed from the stream."""
        if not self.trimmed:
            return False
        if self.first_retained is None:
            return position < self.last_generated
        return trimmed_past(self.first_retained, position)


@dataclass(frozen=True, slots=True)
class StreamState:
    """What Redis says of an account's stream at the moment a session opens."""

    epoch: str
    head: StreamHead
    holds_position: bool = False  # the stream has an entry at the position the client gave


@dataclass(frozen=True, slots=True)
class Start:
    """How a session begins: the position it reports and the cursor it reads after."""

    reported: StreamId  # the welcome's `last_id`
    cursor: StreamId  # read strictly after this
    recovered: bool
    catch_up: bool = True  # the stream held entries after `cursor` when the position was pinned


def position_lost(state: StreamState, position: StreamId, epoch: str) -> bool:
    """Whether Redis lost data a session at `position` (of history `epoch`) had not read: the
    epoch changed, or the stream should hold the position and does not (it asked head.lua)."""
    head = state.head
    if state.epoch != epoch or position > head.last_generated:
        return True
    return position != ZERO and head.should_hold(position) and not state.holds_position


def resolve_start(requested: Requested, state: StreamState, epoch: str | None) -> Start:
    """Turn the client's request into a concrete position, before the WebSocket opens."""
    head = state.head
    if requested.kind is From.NOW:
        return Start(head.last_generated, head.last_generated, recovered=True, catch_up=False)
    position = requested.after
    # The client claims an ID this stream never produced: Redis lost data since. Read from
    # what the stream has now so that new events are not skipped, and say so.
    lost = position > head.last_generated
    if lost:
        position = head.last_generated
    elif position != ZERO and head.should_hold(position) and not state.holds_position:
        # The client's position should be in the stream and is not: Redis lost it (restarted
        # without it, say), and with it maybe events after it. Deliver from there, and say so.
        lost = True
    if epoch is not None and epoch != state.epoch:
        lost = True
    lost = lost or head.lost_after(position)
    cursor = position
    if head.trimmed and head.first_retained is not None and position < head.first_retained:
        # Start just before the first retained entry, so that a later `lost_after` check
        # compares against a position the stream still agrees with.
        cursor = head.first_retained.prev()
    # Nothing after the cursor when pinned: whatever comes later wakes the session, which
    # registered before the position was pinned, so it need not read at once.
    catch_up = cursor < head.last_generated
    return Start(reported=position, cursor=cursor, recovered=not lost, catch_up=catch_up)
