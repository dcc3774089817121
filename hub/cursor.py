"""Where a session starts reading, and whether its client lost anything. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hub.errors import BadRequest
from hub.ids import ZERO, StreamId, trimmed_past


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


@dataclass(frozen=True, slots=True)
class StreamState:
    """What Redis says of an account's stream at the moment a session opens."""

    epoch: str
    last_generated: StreamId  # 0-0 when the stream never had an entry
    first_retained: StreamId | None  # None when the stream holds no entry
    trimmed: bool  # whether any entry was ever removed (entries-added > length)


@dataclass(frozen=True, slots=True)
class Start:
    """How a session begins: the position it reports and the cursor it reads after."""

    reported: StreamId  # the welcome's `last_id`
    cursor: StreamId  # read strictly after this
    recovered: bool


def resolve_start(requested: Requested, state: StreamState, epoch: str | None) -> Start:
    """Turn the client's request into a concrete position, before the WebSocket opens."""
    if requested.kind is From.NOW:
        return Start(state.last_generated, state.last_generated, recovered=True)
    position = requested.after
    # The client claims an ID this stream never produced: Redis lost data since. Read from
    # what the stream has now so that new events are not skipped, and say so.
    lost = position > state.last_generated
    if lost:
        position = state.last_generated
    if epoch is not None and epoch != state.epoch:
        lost = True
    if state.trimmed:
        if state.first_retained is None:
            lost = lost or position < state.last_generated
        else:
            lost = lost or trimmed_past(state.first_retained, position)
    cursor = position
    if state.first_retained is not None and position < state.first_retained:
        # Start just before the first retained entry, so that a later check for trimming
        # (`trimmed_past`) compares against a position the stream still agrees with.
        cursor = state.first_retained.prev()
    return Start(reported=position, cursor=cursor, recovered=not lost)
