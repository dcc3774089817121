"""Server-Sent Events (the HTML standard's `text/event-stream`). Pure: no I/O.

Each hub event is one SSE event with no `event:` line (an `EventSource`'s `onmessage` gets it)
and the id `<stream id>/<epoch>`: the browser sends that back as `Last-Event-ID` when it
reconnects by itself, so a resume is checked for loss as a WebSocket's `last_id` and `epoch`
are. Lines end with LF only; a data line never holds a CR or LF (the standard would split it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.core.errors import BadRequest

COMMENT = b":\n\n"  # keeps proxies from closing an idle stream; EventSource ignores it
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_ID_SEPARATOR = "/"


def event(data: bytes, *, event_id: bytes | None = None, name: bytes | None = None) -> bytes:
    """One SSE event. A JSON document with line breaks (whitespace another producer stored)
    becomes several `data:` lines, which the browser joins with LF: the same JSON value."""
    lines = _LINE_BREAK.split(data) if b"\n" in data or b"\r" in data else (data,)
    head = b""
    if name is not None:
        head += b"event: " + name + b"\n"
    if event_id is not None:
        head += b"id: " + event_id + b"\n"
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def event_id(stream_id: bytes, epoch: str) -> bytes:
    """The SSE id of an event: its stream ID and the epoch of the history it belongs to."""
    return stream_id + _ID_SEPARATOR.encode() + epoch.encode()


def retry(milliseconds: int) -> bytes:
    """How long the browser waits before it reconnects by itself."""
    return b"retry: %d\n\n" % milliseconds


def parse_last_event_id(value: str) -> tuple[str, str | None]:
    """`Last-Event-ID` → (stream ID as given, epoch or None): `<stream id>/<epoch>`, as this
    hub's ids are, or a bare stream ID. Each part is checked where the query's would be."""
    last_id, separator, epoch = value.strip().partition(_ID_SEPARATOR)
    if separator and not epoch:
        raise BadRequest("Last-Event-ID: an epoch must follow '/'", code="invalid_epoch")
    return last_id, epoch if separator else None


@dataclass(frozen=True, slots=True)
class Message:
    """One event as a client's parser dispatches it (the standard's "dispatch the event")."""

    data: str
    name: str = "message"
    id: str | None = None


class Parser:
    """The reading side of the format, for Python clients, tests and load tools: feed bytes,
    get the events they complete (comments and `retry:` are skipped, as a browser does).
    Lines end with LF or CRLF (a lone CR, which the hub never sends, is not a line end)."""

    __slots__ = ("_buffer", "_data", "_id", "_name", "last_id")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._name = ""
        self._id: str | None = None
        self.last_id: str | None = None  # the id the client would resume from

    def feed(self, chunk: bytes) -> list[Message]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        messages = (self._line(line.removesuffix(b"\r")) for line in lines)
        return [message for message in messages if message is not None]

    def _line(self, raw: bytes) -> Message | None:
        if not raw:
            return self._dispatch()
        if raw.startswith(b":"):
            return None
        field, _, value = raw.decode("utf-8", "replace").partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._name = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Message | None:
        if self._id is not None:
            self.last_id = self._id
        message = None
        if self._data:
            message = Message("\n".join(self._data), self._name or "message", self.last_id)
        self._data, self._name, self._id = [], "", None
        return message
