"""`GET /ws/{account_id}`: check everything, pin the start position, then open the socket."""

from __future__ import annotations

import structlog
from aiohttp import web

from hub.config import Settings
from hub.core import protocol
from hub.core.cursor import Start, parse_epoch, parse_last_id
from hub.core.errors import BadRequest, RequestError
from hub.engine.session import Session
from hub.web.callers import BEARER_SUBPROTOCOL, SUBPROTOCOL, check_origin, offered_subprotocols
from hub.web.inbound import Inbound
from hub.web.responses import error_for, request_error_response
from hub.web.state import SETTINGS, STATS, STORE
from hub.web.subscriptions import admit, pin, refused, serve, started, subscriber
from hub.web.websocket import HubWebSocket
from hub.web.wires import WebSocketWire

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


@routes.get("/ws/{account_id}")
async def websocket(request: web.Request) -> web.StreamResponse:
    """No error middleware wraps this handler (see `json_errors`): it answers its own."""
    try:
        session, ws, start, epoch, batched = await _open(request)
    except RequestError as error:
        refused(request, error)
        if _browser_refusal(request, error):
            return await _refuse_in_band(request, error)
        return request_error_response(error)
    except Exception as error:
        response = error_for(error, request.path)
        if response is None:
            raise
        return response
    if not await started(request, session, lambda: ws.prepare(request)):
        return web.Response()  # the client left during the handshake: nothing to serve
    inbound = Inbound(
        session,
        ws,
        store=request.app[STORE],
        settings=request.app[SETTINGS],
        stats=request.app[STATS],
    )
    wire = WebSocketWire(request, ws, batched=batched)
    await serve(request, session, wire, start, epoch, inbound.receive)
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


async def _open(request: web.Request) -> tuple[Session, HubWebSocket, Start, str, bool]:
    """Check everything, register the session and pin its start, all before the upgrade."""
    settings = request.app[SETTINGS]
    check_origin(request)
    admit(request)
    offered = offered_subprotocols(request)
    if SUBPROTOCOL not in offered and any(p.startswith(BEARER_SUBPROTOCOL) for p in offered):
        raise BadRequest(
            f"a token offered as a subprotocol needs the '{SUBPROTOCOL}' subprotocol offered too",
            code="subprotocol_required",
        )
    ws = _socket(request, settings)
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade request", code="not_websocket")
    account, claims = subscriber(request)
    requested = parse_last_id(request.query.get("last_id"))
    epoch = parse_epoch(request.query.get("epoch"))
    batched = request.query.get("batch", "0")
    if batched not in ("0", "1"):
        raise BadRequest("'batch' must be 0 or 1", code="invalid_batch")
    session, start, current_epoch = await pin(request, account, claims, requested, epoch)
    return session, ws, start, current_epoch, batched == "1"
