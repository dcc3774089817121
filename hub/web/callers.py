"""Who is calling, and from where: the token a request presents (header, subprotocol, cookie or
query), its verified claims, the page's origin, the account of the path. Shared by the HTTP
API, `/ws` and `/sse`."""

from __future__ import annotations

import time

from aiohttp import hdrs, web

from hub.config import AuthMode
from hub.core.auth import UNRESTRICTED, Claims, verify
from hub.core.errors import Forbidden, Unauthorized
from hub.core.ids import validate_account_id
from hub.web.state import ORIGINS, SETTINGS

TOKEN_COOKIE = "hub_token"
SUBPROTOCOL = "hub"
BEARER_SUBPROTOCOL = "bearer."


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
    """A socket's page must be allowed (see hub.core.origins); refused with HTTP 403."""
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
