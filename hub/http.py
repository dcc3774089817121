"""HTTP handlers and the request helpers shared with the WebSocket endpoint.

Handlers are thin: parse, check the token's rights, call the store, write JSON.
"""

from __future__ import annotations

import asyncio
import functools
import time
from importlib.resources import files
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from hub import publishing
from hub.aio import uncancellable, within
from hub.auth import UNRESTRICTED, Claims, require, verify
from hub.config import AuthMode
from hub.errors import (
    BadRequest,
    Forbidden,
    RequestError,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from hub.events import JSON, encode_payload, parse_json, validate_type
from hub.ids import (
    ZERO,
    StreamId,
    normalize_email,
    parse_decimal,
    validate_account_id,
    validate_idempotency_key,
)
from hub.origins import CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS
from hub.state import NOTIFIERS, ORIGINS, SETTINGS, STATS, STORE
from hub.store import REDIS_FAILURES, unavailable

DEFAULT_HISTORY_LIMIT = 100
READY_TIMEOUT = 2.0
MAX_HISTORY_LIMIT = 1000
TOKEN_COOKIE = "hub_token"
IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
SUBPROTOCOL = "hub"
BEARER_SUBPROTOCOL = "bearer."

OPENAPI = files("hub").joinpath("openapi.json").read_bytes()

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": code, "message": message}, status=status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def request_error_response(error: RequestError) -> web.Response:
    response = error_response(error.status, error.code, error.message)
    if error.closes_connection:
        response.force_close()
    if error.retry_after is not None:
        response.headers[hdrs.RETRY_AFTER] = str(error.retry_after)
    return response


def error_for(error: Exception, path: str) -> web.Response | None:
    """The JSON error response for an exception a handler let out, or None to re-raise."""
    if isinstance(error, RequestError):
        return request_error_response(error)
    if unavailable(error):
        log.warning("redis_unavailable", path=path, error=str(error))
        return error_response(503, "unavailable", "Redis is unavailable; retry later")
    if isinstance(error, REDIS_FAILURES):
        log.error("redis_command_failed", path=path, exc_info=error)
        return error_response(500, "internal", "a Redis command failed")
    if isinstance(error, web.HTTPException) and error.status >= 400:
        return error_response(
            error.status, _HTTP_CODES.get(error.status, "http_error"), error.reason
        )
    return None


def json_errors(handler: Handler) -> Handler:
    """Every error leaves as `{"error", "message"}`; the process keeps serving.

    A decorator rather than a middleware: a middleware's frame would live as long as each
    WebSocket, and memory per socket counts.
    """

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as error:
            response = error_for(error, request.path)
            if response is None:
                raise
            return response

    return handle


async def json_router_errors(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the router's own 404 and 405 answer JSON like the rest."""
    plain = isinstance(response, web.Response) and response.content_type == "text/plain"
    if plain and response.status in _HTTP_CODES:
        assert isinstance(response, web.Response)
        body = orjson.dumps({"error": _HTTP_CODES[response.status], "message": response.reason})
        response.body = body
        response.content_type = "application/json"
        response.headers[hdrs.CONTENT_LENGTH] = str(len(body))


# --- helpers shared with the WebSocket endpoint ----------------------------------------------


def offered_subprotocols(request: web.BaseRequest) -> list[str]:
    return [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]


def presented_token(request: web.Request) -> tuple[str, bool] | None:
    """The token, from the first of: Authorization, subprotocol, cookie, query string; and
    whether it came from the cookie (which a browser attaches by itself)."""
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), False
    for offered in offered_subprotocols(request):
        if offered.startswith(BEARER_SUBPROTOCOL) and len(offered) > len(BEARER_SUBPROTOCOL):
            return offered.removeprefix(BEARER_SUBPROTOCOL), False
    if cookie := request.cookies.get(TOKEN_COOKIE):
        return cookie, True
    if query := request.query.get("token"):
        return query, False
    return None


def authenticate(request: web.Request) -> Claims:
    settings = request.app[SETTINGS]
    if settings.auth is AuthMode.OFF:
        return UNRESTRICTED
    presented = presented_token(request)
    if presented is None:
        raise Unauthorized("a token is required", code="missing_token")
    token, from_cookie = presented
    origin = request.headers.get(hdrs.ORIGIN)
    if from_cookie and not request.app[ORIGINS].may_use_cookie(origin, request.host):
        raise _origin_refused(origin)
    assert settings.secret is not None
    return verify(token, settings.secret, time.time())


def _origin_refused(origin: str | None) -> Forbidden:
    return Forbidden(f"origin {(origin or '')[:100]!r} is not allowed", code="origin_not_allowed")


def account_param(request: web.Request) -> str:
    return validate_account_id(request.match_info["account_id"])


def check_origin(request: web.Request) -> None:
    """A socket's page must be allowed (see hub.origins); refused with HTTP 403."""
    origin = request.headers.get(hdrs.ORIGIN)
    if not request.app[ORIGINS].may_open_socket(origin, request.host):
        raise _origin_refused(origin)


async def cors_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: responses to a listed origin say it may read them."""
    origin = request.headers.get(hdrs.ORIGIN)
    if not isinstance(request, web.Request) or not request.app[ORIGINS].allows_cors(origin):
        return
    assert origin is not None
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)


async def json_body(request: web.Request) -> dict[str, JSON]:
    """The request's JSON object, read within `body_timeout` (a body that trickles in is
    refused with 408 rather than holding the connection)."""
    if request.content_type != "application/json":
        # Also what keeps a cross-site form or text/plain POST (no preflight) out.
        raise UnsupportedMediaType(
            "request bodies must be JSON, sent as Content-Type: application/json"
        )
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    try:
        body = parse_json(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object", code="invalid_body") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    return body


# --- handlers --------------------------------------------------------------------------------


@routes.get("/")
@json_errors
async def root(_: web.Request) -> web.Response:
    return web.Response(text="Healthy")


@routes.get("/healthz")
@json_errors
async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.route(hdrs.METH_OPTIONS, "/accounts/{account_id}/events")
@routes.route(hdrs.METH_OPTIONS, "/accounts")
@routes.route(hdrs.METH_OPTIONS, "/openapi.json")
@json_errors
async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: listed origins may send the API's methods and headers (the CORS
    headers proper are added to every response to them by `cors_headers`)."""
    response = web.Response(status=204)
    if request.app[ORIGINS].allows_cors(request.headers.get(hdrs.ORIGIN)):
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = CORS_METHODS
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = CORS_HEADERS
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = CORS_MAX_AGE
    return response


@routes.get("/openapi.json")
@json_errors
async def openapi(_: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API, kept beside the code (hub/openapi.json)."""
    return web.Response(body=OPENAPI, content_type="application/json")


@routes.get("/readyz")
@json_errors
async def readyz(request: web.Request) -> web.Response:
    """Ready while Redis answers and the notifier read every index shard within its BLOCK
    timeout + 5 s."""
    try:
        await within(request.app[STORE].ping(), READY_TIMEOUT)
    except REDIS_FAILURES as error:  # a timeout is an OSError too
        return error_response(503, "redis_unavailable", f"Redis does not answer: {error}")
    stalled = [n.shard for n in request.app[NOTIFIERS] if not n.healthy()]
    if stalled:
        shards = ", ".join(map(str, stalled))
        return error_response(
            503, "notifier_stalled", f"the notifier has not read recently (shards: {shards})"
        )
    return json_response({"status": "ready"})


@routes.post("/accounts/{account_id}/events")
@json_errors
async def publish(request: web.Request) -> web.Response:
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_publish(account), f"publishing to account {account}")
    body = await json_body(request)
    event_type = validate_type(body.get("type"))
    payload = encode_payload(body.get("payload"))
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None:
        validate_idempotency_key(key)
    published = await publishing.publish(
        request.app[STORE],
        request.app[STATS],
        "http",
        account,
        event_type,
        payload,
        key=key,
        publisher=claims.subject or "",
    )
    if published.replayed:
        response = json_response({"id": published.id}, status=200)
        response.headers[IDEMPOTENT_REPLAYED] = "true"
        return response
    return json_response({"id": published.id}, status=201)


@routes.get("/accounts/{account_id}/events")
@json_errors
async def history(request: web.Request) -> web.Response:
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_read_history(account), f"reading the history of account {account}")
    after = request.query.get("after", "0")
    after_id = ZERO if after == "0" else StreamId.parse(after)
    limit = _limit(request.query.get("limit"))
    frames = await uncancellable(request.app[STORE].history(account, after_id, limit))
    # The stored payloads go out as stored: spliced, never decoded and encoded again.
    body = b'{"events":[' + b",".join(frames) + b"]}"
    return web.Response(body=body, content_type="application/json")


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_HISTORY_LIMIT
    limit = parse_decimal(value)
    if limit is None or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise BadRequest(
            f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}", code="invalid_limit"
        )
    return limit


@routes.post("/accounts")
@json_errors
async def create_account(request: web.Request) -> web.Response:
    claims = authenticate(request)
    require(claims.may_create_accounts(), "creating accounts")
    email = normalize_email((await json_body(request)).get("email"))
    account = await uncancellable(request.app[STORE].create_account(email))
    return json_response({"id": account}, status=201)
