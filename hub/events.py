"""Events: stream fields to wire JSON and back, no I/O.

A payload is stored as text. The hub always stores JSON text. When reading, a payload that
parses as JSON (RFC 8259, any value) is delivered as that value; any other text, which only
another producer can have written, is delivered as a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hub.errors import BadRequest

JSON = Any
"""Any value orjson can encode: dict, list, str, int, float, bool or None."""

MAX_TYPE_LENGTH = 256


def encode_payload(value: JSON) -> bytes:
    """The stored form of a payload: compact JSON text."""
    return orjson.dumps(value)


def decode_payload(raw: bytes) -> JSON:
    """A stored payload as clients see it: its JSON value, or the text itself."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def validate_type(value: object) -> str:
    """Return `value` if it is a valid event type (a string of 1-256 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TYPE_LENGTH:
        raise BadRequest(
            f"'type' must be a string of 1-{MAX_TYPE_LENGTH} characters", code="invalid_type"
        )
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an account's stream."""

    id: str
    type: str
    payload: JSON

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: Mapping[bytes, bytes]) -> Event:
        """Build from a raw stream entry; a missing `type` is "" and a missing payload null."""
        raw_payload = fields.get(b"payload")
        return cls(
            id=entry_id.decode("ascii"),
            type=fields.get(b"type", b"").decode("utf-8", "replace"),
            payload=None if raw_payload is None else decode_payload(raw_payload),
        )

    def as_dict(self) -> dict[str, JSON]:
        return {"id": self.id, "type": self.type, "payload": self.payload}

    def to_frame(self) -> bytes:
        """The event frame sent to sockets: `{"id", "type", "payload"}`, never an `op`."""
        return orjson.dumps(self.as_dict())
