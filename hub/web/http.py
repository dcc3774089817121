"""The HTTP API's handlers (hub/web/openapi.json describes them).

Handlers are thin: parse, check the token's rights, call the store, write JSON.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files

import orjson
import structlog
from aiohttp import hdrs, web

from hub.aio import uncancellable, within
from hub.core.auth import require
from hub.core.errors import (
    BadRequest,
    RequestTimeout,
    UnsupportedMediaType,
)
from hub.core.events import JSON, encode_payload, parse_json, validate_type
from hub.core.ids import (
    ZERO,
    StreamId,
    normalize_email,
    parse_decimal,
    validate_idempotency_key,
)
from hub.core.origins import CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS
from hub.engine import publishing
from hub.redis.store import REDIS_FAILURES
from hub.web.callers import account_param, authenticate
from hub.web.responses import error_response, json_errors, json_response
from hub.web.state import NOTIFIERS, ORIGINS, SETTINGS, STATS, STORE

DEFAULT_HISTORY_LIMIT = 100
READY_TIMEOUT = 2.0
MAX_HISTORY_LIMIT = 1000
IDEMPOTENCY_KEY = "Idempotency-Key"
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"

OPENAPI = files("hub.web").joinpath("openapi.json").read_bytes()

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


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
    """The OpenAPI 3.1 document of this API, kept beside the code (hub/web/openapi.json)."""
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
