"""`GET /ws/{account_id}`: check everything, pin the start position, then open the socket."""

from __future__ import annotations

import itertools

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from hub.auth import require
from hub.cursor import Start, parse_last_id, resolve_start
from hub.errors import BadRequest, Unavailable
from hub.http import SUBPROTOCOL, account_param, authenticate, check_origin, error_for
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


async def _open(request: web.Request) -> tuple[Session, HubWebSocket, Start, str]:
    """Check everything, register the session and pin its start, all before the upgrade."""
    settings = request.app[SETTINGS]
    account = account_param(request)
    check_origin(request)
    claims = authenticate(request)
    require(claims.may_open(account), f"opening the socket of account {account}")
    requested = parse_last_id(request.query.get("last_id"))
    epoch = request.query.get("epoch") or None
    batched = request.query.get("batch", "0")
    if batched not in ("0", "1"):
        raise BadRequest("'batch' must be 0 or 1", code="invalid_batch")
    ws = HubWebSocket(
        protocols=(SUBPROTOCOL,),
        heartbeat=settings.heartbeat,
        max_msg_size=settings.max_message + 1,  # aiohttp refuses messages of this size
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade request", code="not_websocket")

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
