"""Events: payloads in, stream fields to wire JSON out. No I/O.

A payload is stored as JSON text. The hub accepts only payloads it can store and deliver
exactly: no nesting deeper than orjson encodes, no integer outside the 64-bit range (orjson
would read it as a float and change it silently). On the way out a stored payload that is
JSON is spliced into the event frame as stored, never decoded and encoded again, so that
whatever was accepted can be delivered; any other text, which only another producer can have
written, is delivered as a JSON string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hub.core.errors import BadRequest

JSON = Any
"""Any value orjson can encode: dict, list, str, int, float, bool or None."""

MAX_TYPE_LENGTH = 256
MAX_DEPTH = 254  # orjson's limit on nesting when encoding
# Integers beyond 64 bits have at least 19 digits: only text with such a run of digits (rare)
# is parsed a second time, exactly, by the standard library.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
# Text shorter than this cannot nest deeper than MAX_DEPTH (two brackets a level).
_DEPTH_CHECK_FROM = 2 * (MAX_DEPTH + 1)


def parse_json(text: str | bytes) -> JSON:
    """JSON text as a value, every integer exact; raise `orjson.JSONDecodeError` if invalid."""
    value = orjson.loads(text)
    long = _LONG_DIGITS_BYTES if isinstance(text, bytes) else _LONG_DIGITS
    if long.search(text):  # type: ignore[arg-type]
        try:
            value = json.loads(text)  # orjson has already rejected what is not JSON
        except RecursionError:
            raise orjson.JSONDecodeError("nesting too deep", "", 0) from None
    return value


def encode_payload(value: JSON) -> bytes:
    """The stored form of a payload: compact JSON text; BadRequest if it cannot be stored."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise BadRequest(
            f"the payload cannot be stored: it must nest at most {MAX_DEPTH} levels deep and "
            "hold integers within the 64-bit range",
            code="invalid_payload",
        ) from None


def payload_json(raw: bytes | None) -> bytes:
    """A stored payload as JSON text for the wire: itself if it is JSON the hub could have
    accepted (`encode_payload`), else a JSON string. Another producer's JSON nested deeper
    than that is sent as a string: a frame or history page around it might be too deep for a
    client's parser."""
    if raw is None:
        return b"null"
    try:
        value = orjson.loads(raw)
        if len(raw) >= _DEPTH_CHECK_FROM and isinstance(value, list | dict):
            orjson.dumps(value)  # raises past MAX_DEPTH, as at publish
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return orjson.dumps(raw.decode("utf-8", "replace"))
    return raw


def decode_payload(raw: bytes) -> JSON:
    """A stored payload as clients see it: its JSON value, or the text itself."""
    return orjson.loads(payload_json(raw))


def event_frame(entry_id: bytes, fields: Mapping[bytes, bytes]) -> bytes:
    """The event frame sent to sockets, `{"id", "type", "payload"}` (never an `op`), built from
    the stored bytes; a missing `type` is "" and a missing payload null."""
    event_type = orjson.dumps(fields.get(b"type", b"").decode("utf-8", "replace"))
    payload = payload_json(fields.get(b"payload"))
    return b'{"id":"%b","type":%b,"payload":%b}' % (entry_id, event_type, payload)


def validate_type(value: object) -> str:
    """Return `value` if it is a valid event type (a string of 1-256 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TYPE_LENGTH:
        raise BadRequest(
            f"'type' must be a string of 1-{MAX_TYPE_LENGTH} characters", code="invalid_type"
        )
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an account's stream, decoded."""

    id: str
    type: str
    payload: JSON

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: Mapping[bytes, bytes]) -> Event:
        """Decode a raw stream entry, as a client decodes its frame."""
        return cls(**orjson.loads(event_frame(entry_id, fields)))

    def as_dict(self) -> dict[str, JSON]:
        return {"id": self.id, "type": self.type, "payload": self.payload}

    def to_frame(self) -> bytes:
        return orjson.dumps(self.as_dict())
