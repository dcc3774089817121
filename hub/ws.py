"""`GET /ws/{account_id}`: check everything, pin the start position, then open the socket."""

from __future__ import annotations

import itertools

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from hub import protocol
from hub.auth import require
from hub.config import Settings
from hub.cursor import Start, parse_epoch, parse_last_id, resolve_start
from hub.errors import BadRequest, RequestError, Unavailable
from hub.http import (
    BEARER_SUBPROTOCOL,
    SUBPROTOCOL,
    account_param,
    authenticate,
    check_origin,
    error_for,
    error_response,
    offered_subprotocols,
)
from hub.session import Session
from hub.state import READER, REGISTRY, SESSIONS, SETTINGS, STORE, STREAM_STATES
from hub.websocket import HubWebSocket

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
_connection_ids = itertools.count(1)


@routes.get("/ws/{account_id}")
async def websocket(request: web.Request) -> web.StreamResponse:
    """No error middleware wraps this handler (see `json_errors`): it answers its own."""
    registry, sessions = request.app[REGISTRY], request.app[SESSIONS]
    try:
        session, ws, start, epoch = await _open(request)
    except RequestError as error:
        if _browser_refusal(request, error):
            return await _refuse_in_band(request, error)
        return error_response(error.status, error.code, error.message)
    except Exception as error:
        response = error_for(error, request.path)
        if response is None:
            raise
        return response
    try:
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            return web.Response()  # the client left during the handshake: nothing to serve
        sessions.add(session)
        log.info(
            "session_opened",
            account=session.account,
            conn=session.conn,
            last_id=str(start.reported),
            recovered=start.recovered,
        )
        await session.run(request, ws, start, epoch)
        log.info(
            "session_closed",
            account=session.account,
            conn=session.conn,
            last_id=str(session.cursor),
            code=session.close_code,
        )
    finally:
        registry.unregister(session.account, session.signal)
        sessions.discard(session)
    return ws


_HTTP_ONLY = frozenset({"origin_not_allowed", "subprotocol_required", "not_websocket"})


def _browser_refusal(request: web.Request, error: RequestError) -> bool:
    """Whether to refuse inside an accepted upgrade, with a close code a browser can read
    (it sees every refused upgrade as a bare 1006): for clients that offer `hub`, past the
    Origin check, on a request that is a valid upgrade."""
    return (
        error.code not in _HTTP_ONLY
        and SUBPROTOCOL in offered_subprotocols(request)
        and _socket(request, request.app[SETTINGS]).can_prepare(request).ok
    )


async def _refuse_in_band(request: web.Request, error: RequestError) -> web.StreamResponse:
    ws = HubWebSocket(protocols=(SUBPROTOCOL,), compress=False)
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        return web.Response()
    code = protocol.refusal(error.status, error.code)
    log.info("session_refused", code=int(code), reason=error.code)
    await ws.close(code=code, message=error.code.encode())
    return ws


def _socket(request: web.Request, settings: Settings) -> HubWebSocket:
    """The response that upgrades to a WebSocket. `hub` is selected when offered; when it
    is not, the hub offers nothing to match (aiohttp would log the client's offers)."""
    offered = SUBPROTOCOL in offered_subprotocols(request)
    return HubWebSocket(
        protocols=(SUBPROTOCOL,) if offered else (),
        heartbeat=settings.heartbeat,
        max_msg_size=settings.max_message + 1,  # aiohttp refuses messages of this size
        compress=False,
    )


async def _open(request: web.Request) -> tuple[Session, HubWebSocket, Start, str]:
    """Check everything, register the session and pin its start, all before the upgrade."""
    settings = request.app[SETTINGS]
    check_origin(request)
    offered = offered_subprotocols(request)
    if SUBPROTOCOL not in offered and any(p.startswith(BEARER_SUBPROTOCOL) for p in offered):
        raise BadRequest(
            f"a token offered as a subprotocol needs the '{SUBPROTOCOL}' subprotocol offered too",
            code="subprotocol_required",
        )
    ws = _socket(request, settings)
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade request", code="not_websocket")
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_open(account), f"opening the socket of account {account}")
    requested = parse_last_id(request.query.get("last_id"))
    epoch = parse_epoch(request.query.get("epoch"))
    batched = request.query.get("batch", "0")
    if batched not in ("0", "1"):
        raise BadRequest("'batch' must be 0 or 1", code="invalid_batch")

    session = Session(
        account,
        claims,
        store=request.app[STORE],
        reader=request.app[READER],
        settings=settings,
        conn=f"c{next(_connection_ids)}",
        batched=batched == "1",
    )
    registry = request.app[REGISTRY]
    # Register first, then pin the position, then answer 101: an event published at any
    # instant from here on is either before the pinned position or wakes this session.
    registry.register(account, session.signal)
    try:
        state = await request.app[STREAM_STATES]((account, requested.after))
    except RedisError as error:
        registry.unregister(account, session.signal)
        raise Unavailable(f"Redis is unavailable: {error}") from None
    except BaseException:
        registry.unregister(account, session.signal)
        raise
    return session, ws, resolve_start(requested, state, epoch), state.epoch
