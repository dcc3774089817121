"""Account IDs and Redis stream IDs: validation and arithmetic, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.core.errors import BadRequest

MAX_ACCOUNT_ID_LENGTH = 128
_MAX_PART = 2**64 - 1
# Control characters (C0, DEL, C1) and whitespace, spelled out: Python's `\s` and the one of
# JSON Schema patterns (ECMA-262) are not the same set, and /openapi.json states these rules.
BLANK_OR_CONTROL = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# No key separators, glob or hash-tag characters, whitespace or control characters: an
# account ID is spliced into key names, so it must never be able to forge another key.
_FORBIDDEN = re.compile(f"[:*{{}}{BLANK_OR_CONTROL}]")
# ASCII digits only: `\d` and `int()` also take other scripts' digits (fullwidth, Arabic-Indic,
# superscripts).
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
STREAM_ID_PART = (
    "(?:[0-9]{1,19}|0[0-9]{19}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}"
    "|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}"
    "|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}"
    "|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}"
    "|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]"
    "|1844674407370955161[0-4]|18446744073709551615)"
)
"""A part of a stream ID as a pattern: 1-20 ASCII digits of a value up to 2^64 - 1 (what
/openapi.json states; `StreamId.parse` checks the value itself)."""
_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_decimal(text: str | None) -> int | None:
    """A non-negative integer written in ASCII digits (at most 18), or None for anything else."""
    if text is None or _DECIMAL.fullmatch(text) is None:
        return None
    return int(text)


MAX_IDEMPOTENCY_KEY_LENGTH = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_idempotency_key(value: object) -> str:
    """Return `value` if it is a valid idempotency key: 1-128 characters, none a control."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH
        or _CONTROL.search(value)
    ):
        raise BadRequest(
            f"an idempotency key is 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters, "
            "none of them a control character",
            code="invalid_idempotency_key",
        )
    return value


def validate_account_id(value: str) -> str:
    """Return `value` if it is a valid account ID, else raise BadRequest."""
    if not value or len(value) > MAX_ACCOUNT_ID_LENGTH or _FORBIDDEN.search(value):
        raise BadRequest(
            f"invalid account ID {value[:40]!r}: 1-{MAX_ACCOUNT_ID_LENGTH} characters, "
            "none of ':', '*', '{', '}', whitespace or control characters",
            code="invalid_account",
        )
    return value


def is_valid_account_id(value: str) -> bool:
    try:
        validate_account_id(value)
    except BadRequest:
        return False
    return True


@dataclass(frozen=True, order=True, slots=True)
class StreamId:
    """A Redis stream entry ID, `<milliseconds>-<sequence>`, ordered as Redis orders them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str | bytes) -> StreamId:
        """Parse `ms-seq` or a bare `ms` (sequence 0); raise BadRequest otherwise."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        match = _STREAM_ID.fullmatch(text)
        if match is None:
            raise BadRequest(f"invalid stream ID {text[:40]!r}", code="invalid_id")
        ms, seq = int(match[1]), int(match[2] or 0)
        if ms > _MAX_PART or seq > _MAX_PART:
            raise BadRequest(f"stream ID out of range: {text[:40]!r}", code="invalid_id")
        return cls(ms, seq)

    def next(self) -> StreamId:
        """The smallest ID greater than this one."""
        if self.seq < _MAX_PART:
            return StreamId(self.ms, self.seq + 1)
        return StreamId(self.ms + 1, 0)

    def prev(self) -> StreamId:
        """The greatest ID smaller than this one (0-0 stays 0-0)."""
        if self.seq > 0:
            return StreamId(self.ms, self.seq - 1)
        if self.ms > 0:
            return StreamId(self.ms - 1, _MAX_PART)
        return self

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)
MAX_ID = StreamId(_MAX_PART, _MAX_PART)


def trimmed_past(first_retained: StreamId | None, position: StreamId) -> bool:
    """Whether an entry after `position` may have been trimmed away.

    Trimming removes a stream's oldest entries, so if the first retained entry is not the
    immediate successor of `position` (or earlier), something between them may be gone.
    """
    return first_retained is not None and first_retained > position.next()


_ADDRESS_PART = f"[^@{BLANK_OR_CONTROL}]+"  # no @, whitespace or control characters
_EMAIL = re.compile(rf"{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}")
MAX_EMAIL_LENGTH = 254


def normalize_email(value: object) -> str:
    """The reservation form of an address: validated and lower-cased (case-insensitive)."""
    if not isinstance(value, str) or len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise BadRequest("'email' must be an address such as ada@example.com", code="invalid_email")
    return value.lower()
