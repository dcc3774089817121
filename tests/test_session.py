"""The session's phases and its reply queue, driven directly: the transitions the table allows
and no other, the first close request winning, and replies held back by a full queue."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from hub.config import Settings
from hub.core.auth import Claims
from hub.core.protocol import CloseCode
from hub.core.registry import Registry
from hub.core.stats import Stats
from hub.engine.reads import Reader
from hub.engine.session import _NEXT, MAX_QUEUED_REPLIES, Phase, ReplyQueue, Session
from hub.redis.store import Store


def new_session() -> Session:
    """A session before its welcome: nothing here reads, so the store is never reached."""
    stats = Stats()
    reader = Reader(Store.__new__(Store), Registry(), count=10, stats=stats)
    claims = Claims(subject="a1", expires_at=None)
    return Session(
        "a1", claims, reader=reader, settings=Settings(), stats=stats, conn="c1", via="ws"
    )


def test_every_phase_but_closed_can_stop_and_only_closing_reaches_closed() -> None:
    for phase in Phase:
        can_stop = phase not in (Phase.CLOSING, Phase.CLOSED)
        assert (Phase.CLOSING in _NEXT[phase]) is can_stop
        assert (Phase.CLOSED in _NEXT[phase]) is (phase is Phase.CLOSING)
    assert _NEXT[Phase.CLOSED] == frozenset()


def test_a_transition_the_table_does_not_name_is_refused() -> None:
    session = new_session()
    with pytest.raises(RuntimeError, match="no transition opening -> parked"):
        session._enter(Phase.PARKED)
    assert session.phase is Phase.OPENING


def test_the_first_close_request_wins() -> None:
    session = new_session()
    session.stop(CloseCode.TOKEN_EXPIRED)
    session.stop(CloseCode.GOING_AWAY)
    assert session.phase is Phase.CLOSING
    assert session.stopping is CloseCode.TOKEN_EXPIRED


async def test_a_reply_after_the_close_is_decided_is_dropped() -> None:
    session = new_session()
    await session.reply(b"kept")
    session.stop(CloseCode.GOING_AWAY)
    await session.reply(b"dropped")
    assert session.queued_replies == 1


def step(put: Coroutine[Any, Any, bool]) -> bool | None:
    """Run a put until it waits (None) or ends (its result): no scheduling, no timing."""
    try:
        put.send(None)
    except StopIteration as end:
        return bool(end.value)
    return None


async def test_a_full_reply_queue_holds_the_sender_until_there_is_room() -> None:
    queue = ReplyQueue()
    for n in range(MAX_QUEUED_REPLIES):
        assert step(queue.put(b"%d" % n)) is True
    late = queue.put(b"late")
    assert step(late) is None  # waits for room
    assert queue.take() == b"0"
    assert step(late) is True
    assert len(queue) == MAX_QUEUED_REPLIES


async def test_closing_the_reply_queue_releases_a_held_sender_without_queueing() -> None:
    queue = ReplyQueue()
    for _ in range(MAX_QUEUED_REPLIES):
        step(queue.put(b"x"))
    late = queue.put(b"late")
    assert step(late) is None
    queue.close()
    assert step(late) is False
    assert len(queue) == MAX_QUEUED_REPLIES
