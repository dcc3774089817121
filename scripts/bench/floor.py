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


async def publish(request: web.Request) -> web.Response:
    account = request.match_info["account"]
    body = orjson.loads(await request.read())
    event_id = f"{next(ids)}-0"
    frame = orjson.dumps({"id": event_id, "type": body["type"], "payload": body["payload"]})
    for ws in list(sockets.get(account, ())):
        await ws.send_frame(frame, web.WSMsgType.TEXT)
    return web.json_response({"id": event_id}, status=201)


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    app = web.Application()
    app.add_routes(
        [web.get("/ws/{account}", socket), web.post("/accounts/{account}/events", publish)]
    )
    serve(app, args.port)
