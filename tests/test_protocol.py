"""The wire protocol, tokens and settings: pure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jwt
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.http import WebSocketWriter

from hub.config import AuthMode, Settings, load_settings
from hub.core import frames, protocol
from hub.core.auth import Claims, mint, parse_publish_list, verify
from hub.core.errors import BadRequest, ConfigError, Unauthorized
from hub.core.events import Event, decode_payload, encode_payload, parse_json
from hub.core.ids import StreamId, parse_decimal
from hub.core.protocol import Invalid, Ping, Publish, parse_message
from tests.support import SECRET


def test_ping() -> None:
    assert parse_message("ping", "1") == Ping()


def test_seed_event_message() -> None:
    assert parse_message("event:2", "1") == Publish(
        "2", "SOME_EVENT", b'"Some payload for account(2) from account(1)"', acknowledge=False
    )


def test_json_publish() -> None:
    text = '{"op":"publish","to":"2","type":"T","payload":[1],"ref":"r1"}'
    assert parse_message(text, "1") == Publish("2", "T", b"[1]", "r1")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("hello", "invalid_message"),
        ("[1]", "invalid_message"),
        ('{"op":"dance"}', "unknown_op"),
        ('{"op":"publish","to":3,"type":"T"}', "invalid_account"),
        ('{"op":"publish","to":"a:b","type":"T"}', "invalid_account"),
        ('{"op":"publish","to":"2","type":""}', "invalid_type"),
        ("event:a b", "invalid_account"),
        ("event:", "invalid_account"),
    ],
)
def test_invalid_messages(text: str, code: str) -> None:
    message = parse_message(text, "1")
    assert isinstance(message, Invalid)
    assert message.code == code


def test_invalid_message_keeps_the_ref() -> None:
    message = parse_message('{"op":"nope","ref":{"k":1}}', "1")
    assert isinstance(message, Invalid)
    assert message.ref == {"k": 1}


def test_control_frames() -> None:
    assert orjson.loads(protocol.welcome("1", StreamId(0, 0), "e", True)) == {
        "op": "welcome",
        "account": "1",
        "last_id": "0-0",
        "epoch": "e",
        "recovered": True,
    }
    assert orjson.loads(protocol.ack(5, "1-0")) == {"op": "ack", "ref": 5, "id": "1-0"}
    assert orjson.loads(protocol.error(None, "c", "m"))["op"] == "error"


def test_json_is_parsed_with_exact_integers() -> None:
    """orjson reads integers beyond 64 bits as floats; those are parsed exactly instead, so
    that the hub refuses them rather than changing them."""
    assert parse_json(b"18446744073709551615") == 2**64 - 1
    assert parse_json(b"18446744073709551616") == 2**64
    assert parse_json('{"a": [-9223372036854775809]}') == {"a": [-(2**63) - 1]}
    assert parse_json('"12345678901234567890 in a string"') == "12345678901234567890 in a string"
    with pytest.raises(orjson.JSONDecodeError):
        parse_json(b"1e400")
    with pytest.raises(orjson.JSONDecodeError):
        parse_json(b"[" * 2000 + b"1" + b"]" * 2000 + b" 12345678901234567890")


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, orjson.loads(b"[" * 254 + b"[]" + b"]" * 254)]
)
def test_payloads_the_hub_cannot_store_exactly_are_refused(value: object) -> None:
    with pytest.raises(BadRequest) as refused:
        encode_payload(value)
    assert refused.value.code == "invalid_payload"
    assert encode_payload([2**64 - 1, -(2**63)]) == b"[18446744073709551615,-9223372036854775808]"


def test_numbers_are_ascii_digits_only() -> None:
    assert parse_decimal("42") == 42
    for text in ("\u00b2", "\uff11\uff12\uff13", "\u0663", "", "-1", " 1", "1_000", "9" * 19):
        assert parse_decimal(text) is None, text
    with pytest.raises(BadRequest):
        StreamId.parse("\uff11\uff12\uff13-0")
    with pytest.raises(BadRequest):
        StreamId.parse("1-\u0663")


def test_payloads_json_or_text() -> None:
    assert decode_payload(b'{"a":1}') == {"a": 1}
    assert decode_payload(b'"text"') == "text"
    assert decode_payload(b"plain text") == "plain text"
    assert decode_payload(b"42") == 42
    event = Event.from_entry(b"1-0", {b"type": b"T", b"payload": b"plain"})
    assert orjson.loads(event.to_frame()) == {"id": "1-0", "type": "T", "payload": "plain"}
    assert Event.from_entry(b"1-0", {}).as_dict() == {"id": "1-0", "type": "", "payload": None}


# --- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exp", ["1e400", "NaN", "-Infinity", str(10**400), "253402300800"])
def test_an_expiry_no_timer_can_hold_is_an_invalid_token(exp: str) -> None:
    """`exp` is checked before the hub schedules the socket's close at that time."""
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(b'{"sub":"1","exp":%s}' % exp.encode())
    signing_input = header + b"." + payload
    signature = jwt.utils.base64url_encode(
        jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
            signing_input, SECRET.encode()
        )
    )
    with pytest.raises(Unauthorized) as refused:
        verify((signing_input + b"." + signature).decode(), SECRET, time.time())
    assert refused.value.code == "invalid_token"


def test_token_round_trip() -> None:
    now = time.time()
    claims = verify(mint(SECRET, "7", now, 60, ["7", "8"]), SECRET, now)
    assert claims == Claims("7", int(now + 60), publish_to=frozenset({"7", "8"}))
    assert claims.may_open("7")
    assert not claims.may_open("8")
    assert claims.may_publish("8")
    assert not claims.may_publish("9")
    assert claims.may_read_history("7")
    assert not claims.may_read_history("8")
    assert not claims.may_create_accounts()


def test_star_rights() -> None:
    now = time.time()
    claims = verify(mint(SECRET, "svc", now, 60, "*"), SECRET, now)
    assert claims.may_publish("any")
    assert claims.may_read_history("any")
    assert claims.may_create_accounts()
    assert not claims.may_open("any")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (mint(SECRET, "1", time.time(), -10), "token_expired"),
        (mint("another-secret-of-at-least-32-characters", "1", time.time(), 60), "invalid_token"),
        ("not.a.token", "invalid_token"),
        (jwt.encode({"sub": "1"}, SECRET, algorithm="HS256"), "invalid_token"),
        (jwt.encode({"sub": 1, "exp": 2_000_000_000}, SECRET, algorithm="HS256"), "invalid_token"),
        (
            jwt.encode({"sub": "1", "exp": 2_000_000_000, "pub": 3}, SECRET, algorithm="HS256"),
            "invalid_token",
        ),
        (
            jwt.encode({"sub": "1", "exp": 2_000_000_000}, SECRET * 2, algorithm="HS512"),
            "invalid_token",
        ),
    ],
)
def test_bad_tokens(token: str, code: str) -> None:
    with pytest.raises(Unauthorized) as error:
        verify(token, SECRET, time.time())
    assert error.value.code == code


def test_publish_lists() -> None:
    assert parse_publish_list("*") == "*"
    assert parse_publish_list("1, 2") == ["1", "2"]
    with pytest.raises(BadRequest):
        parse_publish_list("a:b")


# --- settings -------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings({}, dotenv=None)
    assert settings == Settings()
    with pytest.raises(ConfigError, match="HUB_SECRET"):
        settings.check_serving()


def test_every_variable_is_read() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis://127.0.0.1:7000/1",
            "HUB_HOST": "::1",
            "HUB_PORT": "9000",
            "HUB_SECRET": SECRET,
            "HUB_AUTH": "off",
            "HUB_DATA_DIR": "/tmp/hub-data",
            "HUB_RETENTION": "0",
            "HUB_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080/",
            "HUB_MAX_MESSAGE": "2048",
            "HUB_LOG_LEVEL": "DEBUG",
            "HUB_SEND_TIMEOUT": "3",
        },
        dotenv=None,
    )
    settings.check_serving()
    assert settings.redis_url == "redis://127.0.0.1:7000/1"
    assert (settings.host, settings.port, settings.auth) == ("::1", 9000, AuthMode.OFF)
    assert settings.data_dir == Path("/tmp/hub-data")
    assert (settings.retention, settings.max_message, settings.log_level) == (0, 2048, "debug")
    assert settings.allowed_origins == frozenset({"https://a.example", "http://b.example:8080"})
    assert settings.send_timeout == 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://x"),
        ("HUB_PORT", "80000"),
        ("HUB_PORT", "http"),
        ("HUB_SECRET", "short"),
        ("HUB_AUTH", "maybe"),
        ("HUB_RETENTION", "-1"),
        ("HUB_ALLOWED_ORIGINS", "example.com"),
        ("HUB_MAX_MESSAGE", "10"),
        ("HUB_LOG_LEVEL", "loud"),
        ("HUB_SEND_TIMEOUT", "0"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value}, dotenv=None)


def test_auth_off_is_refused_off_loopback() -> None:
    settings = load_settings({"HUB_AUTH": "off", "HUB_HOST": "0.0.0.0"}, dotenv=None)
    with pytest.raises(ConfigError, match="HUB_AUTH=off"):
        settings.check_serving()
    with pytest.raises(ConfigError, match="HUB_AUTH=off"):
        load_settings({"HUB_AUTH": "off"}, dotenv=None).with_overrides(host="10.1.2.3")


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nexport HUB_PORT=9001\nHUB_HOST='::1'\n\nHUB_RETENTION=5\n")
    settings = load_settings({"HUB_RETENTION": "7"}, dotenv=dotenv)
    assert (settings.port, settings.host, settings.retention) == (9001, "::1", 7)
    dotenv.write_text("nonsense\n")
    with pytest.raises(ConfigError, match=r"\.env:1"):
        load_settings({}, dotenv=dotenv)


class _Collect(asyncio.Transport):
    """A transport that keeps what is written: aiohttp's own frames, to compare ours with."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
async def test_text_frames_are_the_bytes_aiohttp_would_write(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    transport = _Collect()
    writer = WebSocketWriter(None, transport, limit=10**9)  # type: ignore[arg-type]
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert frames.text_frame(payload) == bytes(transport.data)
