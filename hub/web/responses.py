"""JSON answers: every error the HTTP API, `/ws` and `/sse` refuse with, one shape for all
(`{"error", "message"}`, the status the error knows), and the router's own 404 and 405 too."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from hub.core.errors import RequestError
from hub.redis.store import REDIS_FAILURES, unavailable

log = structlog.get_logger(__name__)


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
