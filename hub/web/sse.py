"""`GET /sse/{account_id}`: an account's events as Server-Sent Events, for `EventSource`.

The same checks, tokens and rights as `/ws/{id}`, and the same delivery engine. The resume
position is the `Last-Event-ID` header (an `EventSource` sends the last id it saw when it
reconnects by itself), else `?last_id=`; ids are `<stream id>/<epoch>` (hub/core/eventstream.py),
so that a browser's own reconnect is checked for loss: the welcome then says `recovered`.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from hub.core import eventstream
from hub.core.cursor import Requested, parse_epoch, parse_last_id
from hub.core.errors import RequestError
from hub.web.callers import check_origin
from hub.web.responses import error_for
from hub.web.state import SETTINGS
from hub.web.subscriptions import admit, pin, refused, serve, started, subscriber
from hub.web.wires import EventStreamWire

routes = web.RouteTableDef()
LAST_EVENT_ID = "Last-Event-ID"


@routes.get("/sse/{account_id}")
async def event_stream(request: web.Request) -> web.StreamResponse:
    """Errors before the stream starts are JSON answers; after it, the stream's `close`
    event. No error middleware wraps this handler: its frame lives as long as the stream."""
    try:
        check_origin(request)
        admit(request)
        account, claims = subscriber(request)
        requested, epoch = resume_position(request)
        session, start, current_epoch = await pin(request, account, claims, requested, epoch)
    except Exception as error:
        if isinstance(error, RequestError):
            refused(request, error)
        response = error_for(error, request.path)
        if response is None:
            raise
        return response
    wire = EventStreamWire(request, current_epoch)
    if not await started(request, session, wire.prepare):
        return web.Response()  # the client left before the stream started: nothing to serve
    period = request.app[SETTINGS].sse_keepalive
    await serve(request, session, wire, start, current_epoch, lambda: _keep_alive(wire, period))
    return wire.response


def resume_position(request: web.Request) -> tuple[Requested, str | None]:
    """Where to resume: `Last-Event-ID` (`<stream id>/<epoch>` or a bare stream ID, then with
    `?epoch=`) wins over `?last_id=`, which the browser repeats on its own reconnects."""
    header = request.headers.get(LAST_EVENT_ID, "").strip()
    query_epoch = request.query.get("epoch")
    if header:
        last_id, epoch = eventstream.parse_last_event_id(header)
        return parse_last_id(last_id), parse_epoch(epoch if epoch is not None else query_epoch)
    return parse_last_id(request.query.get("last_id")), parse_epoch(query_epoch)


async def _keep_alive(wire: EventStreamWire, period: float) -> None:
    """Until the stream ends: a comment every `period` when nothing else is on its way, which
    keeps proxies from timing out, and finds a client that left (a socket's reads would)."""
    while not wire.closed.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(period):
                await wire.closed.wait()
        if not wire.keep_alive():
            return
