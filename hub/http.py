"""HTTP handlers and the request helpers shared with the WebSocket endpoint.

Handlers are thin: parse, check the token's rights, call the store, write JSON.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from hub.aio import uncancellable, within
from hub.auth import UNRESTRICTED, Claims, require, verify
from hub.config import AuthMode
from hub.errors import BadRequest, Forbidden, RequestError, Unauthorized
from hub.events import JSON, MAX_TYPE_LENGTH, is_valid_type
from hub.ids import ZERO, StreamId, normalize_email, validate_account_id
from hub.state import NOTIFIER, SETTINGS, STORE
from hub.store import UNAVAILABLE

DEFAULT_HISTORY_LIMIT = 100
READY_TIMEOUT = 2.0
MAX_HISTORY_LIMIT = 1000
TOKEN_COOKIE = "hub_token"
SUBPROTOCOL = "hub"
BEARER_SUBPROTOCOL = "bearer."

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": code, "message": message}, status=status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `{"error", "message"}`; the process keeps serving."""
    try:
        response: web.StreamResponse = await handler(request)
    except RequestError as error:
        return error_response(error.status, error.code, error.message)
    except UNAVAILABLE as error:
        log.warning("redis_unavailable", path=request.path, error=str(error))
        return error_response(503, "unavailable", "Redis is unavailable; retry later")
    except RedisError:
        log.exception("redis_command_failed", path=request.path)
        return error_response(500, "internal", "a Redis command failed")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        return error_response(error.status, code, error.reason)
    return response


# --- helpers shared with the WebSocket endpoint ----------------------------------------------


def presented_token(request: web.Request) -> str | None:
    """The token, from the first of: Authorization, subprotocol, cookie, query string."""
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    for item in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(","):
        offered = item.strip()
        if offered.startswith(BEARER_SUBPROTOCOL) and len(offered) > len(BEARER_SUBPROTOCOL):
            return offered.removeprefix(BEARER_SUBPROTOCOL)
    return request.cookies.get(TOKEN_COOKIE) or request.query.get("token") or None


def authenticate(request: web.Request) -> Claims:
    settings = request.app[SETTINGS]
    if settings.auth is AuthMode.OFF:
        return UNRESTRICTED
    token = presented_token(request)
    if token is None:
        raise Unauthorized("a token is required", code="missing_token")
    assert settings.secret is not None
    return verify(token, settings.secret, time.time())


def account_param(request: web.Request) -> str:
    return validate_account_id(request.match_info["account_id"])


def check_origin(request: web.Request) -> None:
    allowed = request.app[SETTINGS].allowed_origins
    origin = request.headers.get(hdrs.ORIGIN)
    if allowed is not None and origin is not None and origin.rstrip("/") not in allowed:
        raise Forbidden(f"origin {origin[:100]!r} is not allowed", code="origin_not_allowed")


async def json_body(request: web.Request) -> dict[str, JSON]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    return body


# --- handlers --------------------------------------------------------------------------------


@routes.get("/")
async def root(_: web.Request) -> web.Response:
    return web.Response(text="Healthy")


@routes.get("/healthz")
async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready while Redis answers and the notifier read within its BLOCK timeout + 5 s."""
    try:
        await within(request.app[STORE].ping(), READY_TIMEOUT)
    except (RedisError, OSError, TimeoutError) as error:
        return error_response(503, "redis_unavailable", f"Redis does not answer: {error}")
    if not request.app[NOTIFIER].healthy():
        return error_response(503, "notifier_stalled", "the notifier has not read recently")
    return json_response({"status": "ready"})


@routes.post("/accounts/{account_id}/events")
async def publish(request: web.Request) -> web.Response:
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_publish(account), f"publishing to account {account}")
    body = await json_body(request)
    event_type = body.get("type")
    if not is_valid_type(event_type):
        raise BadRequest(
            f"'type' must be a string of 1-{MAX_TYPE_LENGTH} characters", code="invalid_type"
        )
    assert isinstance(event_type, str)
    event_id = await uncancellable(
        request.app[STORE].publish(account, event_type, body.get("payload"))
    )
    return json_response({"id": event_id}, status=201)


@routes.get("/accounts/{account_id}/events")
async def history(request: web.Request) -> web.Response:
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_read_history(account), f"reading the history of account {account}")
    after = request.query.get("after", "0")
    after_id = ZERO if after == "0" else StreamId.parse(after)
    limit = _limit(request.query.get("limit"))
    events = await uncancellable(request.app[STORE].history(account, after_id, limit))
    return json_response({"events": [event.as_dict() for event in events]})


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_HISTORY_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_HISTORY_LIMIT:
        raise BadRequest(
            f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}", code="invalid_limit"
        )
    return int(value)


@routes.post("/accounts")
async def create_account(request: web.Request) -> web.Response:
    claims = authenticate(request)
    require(claims.may_create_accounts(), "creating accounts")
    email = normalize_email((await json_body(request)).get("email"))
    account = await uncancellable(request.app[STORE].create_account(email))
    return json_response({"id": account}, status=201)
