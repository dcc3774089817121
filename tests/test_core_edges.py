"""Edges of the pure core that mutation testing showed untested: each test kills mutants
(mutmut over hub/ids, cursor, registry, protocol, events, auth) that changed behaviour and
survived the rest of the suite. See tests/README.md for how to run it."""

from __future__ import annotations

import time

import jwt
import orjson
import pytest

from hub.core import protocol
from hub.core.auth import MAX_EXPIRY, Claims, mint, parse_publish_list, require, verify
from hub.core.cursor import (
    StreamHead,
    StreamState,
    parse_epoch,
    parse_last_id,
    position_lost,
    resolve_start,
)
from hub.core.errors import BadRequest, Forbidden, Unauthorized
from hub.core.events import event_frame, parse_json, payload_json, validate_type
from hub.core.ids import (
    MAX_ID,
    ZERO,
    StreamId,
    normalize_email,
    validate_account_id,
    validate_idempotency_key,
)
from hub.core.protocol import Auth, CloseCode, Invalid, parse_message, refusal
from hub.core.registry import Registry, Signal
from tests.support import SECRET

S = StreamId.parse


def _raw_token(**claims: object) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _code(error: pytest.ExceptionInfo[BadRequest] | pytest.ExceptionInfo[Unauthorized]) -> str:
    return str(error.value.code)


# --- ids ---------------------------------------------------------------------------------


def test_stream_ids_parse_bytes_and_the_largest_id_and_refuse_the_rest() -> None:
    assert S(b"5-1") == StreamId(5, 1)
    assert S(str(MAX_ID)) == MAX_ID
    for bad in (b"\xff-1", "x", "18446744073709551616-0"):
        with pytest.raises(BadRequest) as error:
            S(bad)
        assert _code(error) == "invalid_id", bad


def test_the_position_before_an_id_is_exact() -> None:
    assert StreamId(5, 0).prev() == StreamId(4, 2**64 - 1)
    assert StreamId(5, 1).prev() == StreamId(5, 0)
    assert StreamId(1, 0).prev() == StreamId(0, 2**64 - 1)
    assert ZERO.prev() == ZERO


def test_the_longest_account_id_email_and_idempotency_key_are_accepted() -> None:
    assert validate_account_id("a" * 128) == "a" * 128
    address = "a" * (254 - len("@example.com")) + "@example.com"
    assert normalize_email(address) == address
    assert validate_idempotency_key("k" * 128) == "k" * 128
    assert validate_idempotency_key("k") == "k"
    with pytest.raises(BadRequest) as error:
        normalize_email("nope")
    assert _code(error) == "invalid_email"


@pytest.mark.parametrize("key", ["", "k" * 129, "a\x00b", 5, None])
def test_bad_idempotency_keys_are_refused_with_their_code(key: object) -> None:
    with pytest.raises(BadRequest) as error:
        validate_idempotency_key(key)
    assert _code(error) == "invalid_idempotency_key"


# --- cursor ------------------------------------------------------------------------------


def test_last_id_and_epoch_parameters() -> None:
    with pytest.raises(BadRequest) as error:
        parse_last_id("latest")
    assert _code(error) == "invalid_last_id"
    assert parse_epoch(None) is None
    assert parse_epoch("") is None
    assert parse_epoch("0123") == "0123"
    for bad in ("12a", "1" * 33, "-1"):
        with pytest.raises(BadRequest) as error:
            parse_epoch(bad)
        assert _code(error) == "invalid_epoch", bad


def test_a_trimmed_stream_should_hold_its_first_retained_entry() -> None:
    head = StreamHead(S("9-0"), S("5-0"), trimmed=True)
    assert head.should_hold(S("5-0"))
    state = StreamState("e", head, holds_position=False)
    assert not resolve_start(parse_last_id("5-0"), state, None).recovered


def test_position_lost_by_epoch_by_head_and_by_holding() -> None:
    head = StreamHead(S("9-0"), S("1-0"), trimmed=False)
    held = StreamState("e", head, holds_position=True)
    missing = StreamState("e", head, holds_position=False)
    assert not position_lost(held, S("5-0"), "e")
    assert position_lost(held, S("5-0"), "other")  # another epoch: Redis lost the account
    assert not position_lost(held, S("9-0"), "e")
    assert position_lost(held, S("9-1"), "e")  # past the last ID ever generated
    assert position_lost(missing, S("5-0"), "e")
    assert not position_lost(missing, ZERO, "e")
    empty = StreamState("e", StreamHead(S("9-0"), None, trimmed=False), holds_position=False)
    assert not position_lost(empty, S("5-0"), "e")


# --- registry ----------------------------------------------------------------------------


def test_the_registry_clock_orders_reads_and_wakes_and_forgets_departed_accounts() -> None:
    registry = Registry()
    first, second = registry.tick(), registry.tick()
    assert second > first
    signal = Signal()
    registry.register("a", signal)
    assert registry.woken_at("a") == 0
    registry.wake(["a"])
    woken = registry.woken_at("a")
    assert second < woken < registry.tick()
    registry.unregister("a", signal)
    assert registry.woken_at("a") == 0
    assert registry.woken_at("never") == 0


# --- protocol ----------------------------------------------------------------------------


def test_the_auth_message() -> None:
    assert parse_message('{"op":"auth","token":"t","ref":1}', "1") == Auth("t", 1)
    for text in (
        '{"op":"auth","token":"","ref":2}',
        '{"op":"auth","token":5,"ref":2}',
        '{"op":"auth","ref":2}',
    ):
        assert parse_message(text, "1") == Invalid(
            "invalid_token", "'token' must be a token string", 2
        ), text


def test_a_publish_keeps_its_key_and_an_error_keeps_its_ref() -> None:
    message = parse_message('{"op":"publish","to":"2","type":"T","payload":1,"key":"k1"}', "1")
    assert getattr(message, "key", None) == "k1"
    bad_key = '{"op":"publish","to":"2","type":"T","payload":1,"key":"","ref":"r"}'
    assert isinstance(invalid := parse_message(bad_key, "1"), Invalid)
    assert (invalid.code, invalid.ref) == ("invalid_idempotency_key", "r")
    for text in (
        '{"op":"publish","to":3,"ref":"r"}',
        '{"op":"publish","to":"a:b","ref":"r"}',
        '{"op":"publish","to":"2","type":"","ref":"r"}',
    ):
        refused = parse_message(text, "1")
        assert isinstance(refused, Invalid), text
        assert refused.ref == "r", text
        assert refused.message, text
    unknown = parse_message('{"op":"dance"}', "1")
    assert isinstance(unknown, Invalid)
    assert "'dance'" in unknown.message


def test_refusals_map_to_the_close_codes_of_the_contract() -> None:
    assert refusal(401, "token_expired") is CloseCode.TOKEN_EXPIRED
    assert refusal(400, "x") is CloseCode.BAD_REQUEST
    assert refusal(401, "x") is CloseCode.UNAUTHORIZED
    assert refusal(403, "x") is CloseCode.FORBIDDEN
    assert refusal(429, "x") is CloseCode.TOO_MANY_SOCKETS
    assert refusal(503, "x") is CloseCode.TRY_AGAIN_LATER
    assert refusal(500, "x") is CloseCode.INTERNAL_ERROR


def test_acks_and_errors_carry_every_field() -> None:
    assert orjson.loads(protocol.ack(5)) == {"op": "ack", "ref": 5}
    assert orjson.loads(protocol.ack(5, "1-0", replayed=True)) == {
        "op": "ack",
        "ref": 5,
        "id": "1-0",
        "replayed": True,
    }
    assert orjson.loads(protocol.error("r", "c", "m")) == {
        "op": "error",
        "ref": "r",
        "code": "c",
        "message": "m",
    }


# --- events ------------------------------------------------------------------------------


def test_payloads_at_and_past_the_depth_limit_and_undecodable_bytes() -> None:
    with pytest.raises(orjson.JSONDecodeError):  # deep enough for Python's own recursion
        parse_json("[" * 1000 + "12345678901234567890" + "]" * 1000)
    deep = b"[" * 255 + b"]" * 255  # one level past the depth the hub accepts
    assert payload_json(deep) == orjson.dumps(deep.decode())
    assert payload_json(b"[" * 300 + b"]" * 300).startswith(b'"')
    assert payload_json(b"\xff") == orjson.dumps("\ufffd")
    assert orjson.loads(event_frame(b"1-0", {b"type": b"\xff"}))["type"] == "\ufffd"
    assert validate_type("t" * 256) == "t" * 256


# --- auth --------------------------------------------------------------------------------


def test_subscriber_and_star_tokens_verify_to_their_exact_claims() -> None:
    with pytest.raises(Forbidden):
        require(False, "x")
    require(True, "x")
    now = time.time()
    assert verify(mint(SECRET, "7", now, 60), SECRET, now) == Claims("7", int(now + 60))
    star = verify(mint(SECRET, "svc", now, 60, "*"), SECRET, now)
    assert star == Claims("svc", int(now + 60), publish_everywhere=True)
    claims = jwt.decode(mint(SECRET, "7", 1000.0, 60), options={"verify_signature": False})
    assert claims == {"sub": "7", "exp": 1060, "iat": 1000}
    assert jwt.get_unverified_header(mint(SECRET, "7", 1000.0, 60))["alg"] == "HS256"
    with pytest.raises(BadRequest):
        parse_publish_list(" , ")


@pytest.mark.parametrize(
    "claim", [{"pub": 3}, {"pub": "abc"}, {"pub": [1]}, {"exp": "2000000000"}, {"exp": True}]
)
def test_malformed_claims_are_invalid_tokens(claim: dict[str, object]) -> None:
    token = _raw_token(**({"sub": "1", "exp": 2_000_000_000} | claim))
    with pytest.raises(Unauthorized) as error:
        verify(token, SECRET, 1000.0)
    assert _code(error) == "invalid_token"


def test_expiry_bounds() -> None:
    assert verify(_raw_token(sub="1", exp=MAX_EXPIRY), SECRET, 1000.0).expires_at == MAX_EXPIRY
    for expiry in (-MAX_EXPIRY, 1000):
        with pytest.raises(Unauthorized) as error:
            verify(_raw_token(sub="1", exp=expiry), SECRET, 1000.0)
        assert _code(error) == "token_expired", expiry


@pytest.mark.parametrize(
    "text", ["hello", "[1]", "event:a b", '{"op":"dance"}', "{", '{"op":"publish","to":3}']
)
def test_every_refused_message_says_why(text: str) -> None:
    refused = parse_message(text, "1")
    assert isinstance(refused, Invalid)
    assert isinstance(refused.message, str)
    assert refused.message
