"""The WebSocket wire protocol: client messages in, control frames out. Pure: no I/O.

Client messages: `ping`, the seed's `event:<recipient>`, and JSON objects with an `op`.
Server frames: `pong`, JSON control frames (each with an `op`), and event frames (no `op`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from hub.core.errors import BadRequest
from hub.core.events import JSON, encode_payload, parse_json, validate_type
from hub.core.ids import StreamId, validate_account_id, validate_idempotency_key

PONG = "pong"
SEED_EVENT_TYPE = "SOME_EVENT"


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish one event to account `to`; `ref` is echoed in the ack or error (JSON form)."""

    to: str
    type: str
    payload: bytes  # JSON text, checked storable (`encode_payload`)
    ref: JSON = None
    acknowledge: bool = True  # the seed's `event:` form gets no reply on success
    key: str | None = None  # idempotency key: a repeat within the window stores nothing


@dataclass(frozen=True, slots=True)
class Auth:
    """Replace the socket's token (refresh before expiry); `ref` is echoed in the answer."""

    token: str
    ref: JSON = None


@dataclass(frozen=True, slots=True)
class Invalid:
    code: str
    message: str
    ref: JSON = None


ClientMessage = Ping | Publish | Auth | Invalid


def seed_payload(recipient: str, sender: str) -> str:
    return f"Some payload for account({recipient}) from account({sender})"


def parse_message(text: str, sender: str) -> ClientMessage:
    """Parse one text message from the socket of account `sender`."""
    if text == "ping":
        return Ping()
    if text.startswith("event:"):
        recipient = text.removeprefix("event:")
        try:
            validate_account_id(recipient)
        except BadRequest as error:
            return Invalid(error.code, error.message)
        return Publish(
            recipient,
            SEED_EVENT_TYPE,
            encode_payload(seed_payload(recipient, sender)),
            acknowledge=False,
        )
    try:
        message = parse_json(text)
    except orjson.JSONDecodeError:
        return Invalid(
            "invalid_message", "expected 'ping', 'event:<account>' or a JSON object with an 'op'"
        )
    if not isinstance(message, dict):
        return Invalid("invalid_message", "a JSON message must be an object with an 'op'")
    return _parse_op(message)


def _parse_op(message: dict[str, Any]) -> ClientMessage:
    ref = message.get("ref")
    op = message.get("op")
    if op == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            return Invalid("invalid_token", "'token' must be a token string", ref)
        return Auth(token, ref)
    if op != "publish":
        return Invalid("unknown_op", f"unknown op {str(op)[:40]!r}; known: 'publish', 'auth'", ref)
    to = message.get("to")
    if not isinstance(to, str):
        return Invalid("invalid_account", "'to' must be an account ID string", ref)
    try:
        validate_account_id(to)
    except BadRequest as error:
        return Invalid(error.code, error.message, ref)
    try:
        event_type = validate_type(message.get("type"))
        payload = encode_payload(message.get("payload"))
        key = message.get("key")
        if key is not None:
            validate_idempotency_key(key)
    except BadRequest as error:
        return Invalid(error.code, error.message, ref)
    return Publish(to, event_type, payload, ref, key=key)


def refusal(status: int, code: str) -> CloseCode:
    """The close code that refuses a browser's upgrade, for the HTTP status and error code
    the same request would get."""
    if code == "token_expired":
        return CloseCode.TOKEN_EXPIRED
    by_status = {
        400: CloseCode.BAD_REQUEST,
        401: CloseCode.UNAUTHORIZED,
        403: CloseCode.FORBIDDEN,
        429: CloseCode.TOO_MANY_SOCKETS,
        503: CloseCode.TRY_AGAIN_LATER,
    }
    return by_status.get(status, CloseCode.INTERNAL_ERROR)


def welcome(account: str, last_id: StreamId, epoch: str, recovered: bool) -> bytes:
    return orjson.dumps(
        {
            "op": "welcome",
            "account": account,
            "last_id": str(last_id),
            "epoch": epoch,
            "recovered": recovered,
        }
    )


def ack(ref: JSON, event_id: str | None = None, *, replayed: bool = False) -> bytes:
    """A publish's ack carries the event ID (`replayed`: an earlier publish with the same
    idempotency key stored it); an auth's ack has no ID."""
    if event_id is None:
        return orjson.dumps({"op": "ack", "ref": ref})
    if replayed:
        return orjson.dumps({"op": "ack", "ref": ref, "id": event_id, "replayed": True})
    return orjson.dumps({"op": "ack", "ref": ref, "id": event_id})


def error(ref: JSON, code: str, message: str) -> bytes:
    return orjson.dumps({"op": "error", "ref": ref, "code": code, "message": message})


class CloseCode(IntEnum):
    """WebSocket close codes the hub sends; the reason of each carries the last delivered ID."""

    GOING_AWAY = 1001  # the hub is shutting down: reconnect (to any hub) with last_id
    PROTOCOL_ERROR = 1002  # the client broke RFC 6455 (e.g. an unmasked frame)
    INTERNAL_ERROR = 1011  # a bug: reconnect with last_id
    TRY_AGAIN_LATER = 1013  # Redis unreachable for too long: back off, reconnect with last_id
    TOKEN_EXPIRED = 4001  # get a fresh token, reconnect with last_id
    BAD_REQUEST = 4400  # the upgrade was refused as a 400 would: fix the request, do not retry
    UNAUTHORIZED = 4401  # missing or invalid token: get a (new) token
    FORBIDDEN = 4403  # the token may not open this account: do not retry
    TOO_MANY_SOCKETS = 4429  # the account holds its most sockets on this hub: back off
    SLOW_CONSUMER = 4008  # the client did not read for send_timeout: reconnect with last_id
    LAGGED = 4009  # retention trimmed events this client had not read: reconnect, resync
