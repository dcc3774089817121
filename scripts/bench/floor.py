#!/usr/bin/env python3
"""The floor: a raw aiohttp fan-out server with no Redis. A POST is encoded once and written
to every socket of the account. Nothing is stored, nothing can be resumed: this measures what
Python and aiohttp alone can deliver on this machine."""

from __future__ import annotations

import itertools
from collections import defaultdict

import orjson
from aiohttp import web
from common import arguments, new_socket, serve, welcome

sockets: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
ids = itertools.count(1)


async def socket(request: web.Request) -> web.WebSocketResponse:
    account = request.match_info["account"]
    ws = new_socket()
    await ws.prepare(request)
    await ws.send_str(welcome(account).decode())
    sockets[account].add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        sockets[account].discard(ws)
    return ws


async def fan_out(account: str, body: dict[str, object]) -> str:
    event_id = f"{next(ids)}-0"
    frame = orjson.dumps({"id": event_id, "type": body["type"], "payload": body["payload"]})
    for ws in list(sockets.get(account, ())):
        await ws.send_frame(frame, web.WSMsgType.TEXT)
    return event_id


async def publish(request: web.Request) -> web.Response:
    """One event per request, like the hub's HTTP API."""
    event_id = await fan_out(request.match_info["account"], orjson.loads(await request.read()))
    return web.json_response({"id": event_id}, status=201)


async def firehose(request: web.Request) -> web.WebSocketResponse:
    """Events as `{"account", "type", "payload"}` messages on one socket: a publisher that
    costs the floor next to nothing, so that its fan-out alone is measured."""
    ws = new_socket()
    await ws.prepare(request)
    async for message in ws:
        body = orjson.loads(message.data)
        await fan_out(body["account"], body)
    return ws


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    app = web.Application()
    app.add_routes(
        [
            web.get("/ws/{account}", socket),
            web.get("/publish", firehose),
            web.post("/accounts/{account}/events", publish),
        ]
    )
    serve(app, args.port)
