"""Stream IDs and start positions: pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.cursor import From, StreamHead, StreamState, parse_last_id, resolve_start
from hub.core.errors import BadRequest
from hub.core.ids import ZERO, StreamId, normalize_email, trimmed_past, validate_account_id

ids = st.builds(StreamId, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@given(ids)
def test_next_and_prev_are_neighbours(stream_id: StreamId) -> None:
    assert stream_id.next() > stream_id
    if stream_id != ZERO:
        assert stream_id.prev() < stream_id
        assert stream_id.prev().next() == stream_id


@given(ids)
def test_parse_round_trips(stream_id: StreamId) -> None:
    assert StreamId.parse(str(stream_id)) == stream_id


@pytest.mark.parametrize("text", ["", "-", "1-", "a-1", "1-2-3", "$", " 1-1", "1" * 21, "-1"])
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(BadRequest):
        StreamId.parse(text)


def test_bare_milliseconds_mean_sequence_zero() -> None:
    assert StreamId.parse("1700") == StreamId(1700, 0)


@pytest.mark.parametrize("account", ["1", "billing", "user-42_x.y", "ü"])
def test_valid_account_ids(account: str) -> None:
    assert validate_account_id(account) == account


@pytest.mark.parametrize("account", ["", "a:b", "a*", "{a}", "a b", "a\nb", "a\x00", "x" * 129])
def test_invalid_account_ids(account: str) -> None:
    with pytest.raises(BadRequest):
        validate_account_id(account)


def test_emails_are_lowercased_and_checked() -> None:
    assert normalize_email("Ada@Example.COM") == "ada@example.com"
    for bad in ["", "ada", "ada@", "a b@x.io", None, 3, "a@b"]:
        with pytest.raises(BadRequest):
            normalize_email(bad)


def test_trimmed_past() -> None:
    position = StreamId(10, 5)
    assert not trimmed_past(None, position)
    assert not trimmed_past(StreamId(10, 5), position)  # the position is still retained
    assert not trimmed_past(StreamId(10, 6), position)  # its immediate successor is first
    assert trimmed_past(StreamId(10, 7), position)  # 10-6 may have existed


def test_parse_last_id() -> None:
    assert parse_last_id(None).kind is From.START
    assert parse_last_id("0").kind is From.START
    assert parse_last_id("$").kind is From.NOW
    assert parse_last_id("5-1").after == StreamId(5, 1)
    with pytest.raises(BadRequest):
        parse_last_id("latest")


def head(last: str, first: str | None, trimmed: bool = False) -> StreamHead:
    return StreamHead(
        last_generated=StreamId.parse(last),
        first_retained=StreamId.parse(first) if first else None,
        trimmed=trimmed,
    )


def state(
    last: str, first: str | None, trimmed: bool = False, epoch: str = "e1", holds: bool = True
) -> StreamState:
    """`holds`: the stream has an entry at the position the client gives."""
    return StreamState(epoch=epoch, head=head(last, first, trimmed), holds_position=holds)


def test_an_untrimmed_stream_never_lost_anything() -> None:
    assert not head("9-0", "5-0", trimmed=False).lost_after(ZERO)
    assert head("9-0", "5-0", trimmed=True).lost_after(ZERO)
    assert not head("9-0", "5-0", trimmed=True).lost_after(StreamId(5, 0).prev())
    assert head("9-0", None, trimmed=True).lost_after(StreamId(8, 0))
    assert not head("9-0", None, trimmed=True).lost_after(StreamId(9, 0))


def test_now_resolves_to_the_last_generated_id() -> None:
    start = resolve_start(parse_last_id("$"), state("9-0", "1-0"), None)
    assert (start.reported, start.cursor, start.recovered) == (StreamId(9, 0), StreamId(9, 0), True)


def test_now_on_an_empty_account_is_zero() -> None:
    start = resolve_start(parse_last_id("$"), state("0-0", None), None)
    assert start.reported == ZERO


def test_resume_inside_the_retained_log_is_recovered() -> None:
    start = resolve_start(parse_last_id("5-0"), state("9-0", "1-0", trimmed=True), "e1")
    assert (start.cursor, start.recovered) == (StreamId(5, 0), True)


def test_resume_before_a_trimmed_head_is_not_recovered() -> None:
    start = resolve_start(parse_last_id("2-0"), state("9-0", "5-0", trimmed=True), None)
    assert start.recovered is False
    assert start.reported == StreamId(2, 0)
    assert start.cursor == StreamId(5, 0).prev()


def test_from_start_of_an_untrimmed_log_is_recovered() -> None:
    start = resolve_start(parse_last_id("0"), state("9-0", "5-0", trimmed=False), None)
    assert start.recovered is True


def test_from_start_of_a_trimmed_log_is_not_recovered() -> None:
    assert not resolve_start(parse_last_id("0"), state("9-0", "5-0", trimmed=True), None).recovered


def test_a_different_epoch_is_not_recovered() -> None:
    assert not resolve_start(parse_last_id("5-0"), state("9-0", "1-0"), "e0").recovered


def test_an_id_the_stream_never_produced_is_not_recovered_and_reads_from_its_end() -> None:
    start = resolve_start(parse_last_id("99-0"), state("9-0", "1-0"), None)
    assert (start.reported, start.cursor, start.recovered) == (
        StreamId(9, 0),
        StreamId(9, 0),
        False,
    )


def test_a_position_missing_from_a_stream_that_should_hold_it_is_not_recovered() -> None:
    """Redis restarted without the client's position (no epoch given): events after it may be
    gone, although the stream was never trimmed. Delivery goes on after the position."""
    start = resolve_start(parse_last_id("5-0"), state("9-0", "7-0", holds=False), None)
    assert (start.cursor, start.recovered) == (StreamId(5, 0), False)
    inside = resolve_start(parse_last_id("5-0"), state("9-0", "1-0", True, holds=False), None)
    assert inside.recovered is False
    # Before the first retained entry of a trimmed stream, only a gap counts.
    assert resolve_start(
        parse_last_id("4-0"), state("9-0", "4-1", True, holds=False), None
    ).recovered


def test_a_position_deleted_by_xdel_is_not_expected_in_the_stream() -> None:
    deleted = StreamHead(
        last_generated=StreamId(9, 0),
        first_retained=StreamId(1, 0),
        trimmed=True,
        max_deleted=StreamId(5, 0),
    )
    assert not deleted.should_hold(StreamId(5, 0))
    assert not deleted.should_hold(StreamId(3, 0))
    assert deleted.should_hold(StreamId(6, 0))


def test_a_start_cursor_is_a_position_the_stream_agrees_with() -> None:
    """From the start of an untrimmed stream the cursor stays 0-0: a client closed before
    anything was delivered resumes from there (its close reason) without a false alarm."""
    start = resolve_start(parse_last_id("0"), state("9-0", "5-0", holds=False), None)
    assert (start.cursor, start.recovered) == (ZERO, True)


def test_everything_trimmed_away() -> None:
    assert not resolve_start(parse_last_id("3-0"), state("9-0", None, trimmed=True), None).recovered
    assert resolve_start(parse_last_id("9-0"), state("9-0", None, trimmed=True), None).recovered


@given(ids, ids, ids)
def test_the_cursor_never_moves_before_the_requested_position_within_the_log(
    requested: StreamId, first: StreamId, last: StreamId
) -> None:
    first, last = min(first, last), max(first, last)
    start = resolve_start(parse_last_id(str(requested)), state(str(last), str(first), True), None)
    assert start.cursor >= min(requested, last)
    assert start.cursor <= last
    # Nothing retained after the requested position is skipped.
    assert start.cursor <= max(requested, first.prev())


def test_catch_up_only_when_the_stream_had_entries_after_the_cursor() -> None:
    assert not resolve_start(parse_last_id("$"), state("9-0", "1-0"), None).catch_up
    assert resolve_start(parse_last_id("0"), state("9-0", "1-0"), None).catch_up
    assert not resolve_start(parse_last_id("0"), state("0-0", None), None).catch_up
    assert resolve_start(parse_last_id("5-0"), state("9-0", "1-0"), None).catch_up
    assert not resolve_start(parse_last_id("9-0"), state("9-0", "1-0"), None).catch_up
    assert not resolve_start(parse_last_id("99-0"), state("9-0", "1-0"), None).catch_up
