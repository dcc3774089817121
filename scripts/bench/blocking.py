#!/usr/bin/env python3
"""The seed tutorial's other alternative: every socket holds its own Redis connection and
blocks on XREAD BLOCK for its account's stream."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from aiohttp import web
from common import arguments, frame, new_socket, serve, welcome

BLOCK_MS = 30_000
URL = web.AppKey("url", str)


async def socket(request: web.Request) -> web.WebSocketResponse:
    account = request.match_info["account"]
    redis = aioredis.Redis.from_url(
        request.app[URL], single_connection_client=True, socket_timeout=BLOCK_MS / 1000 + 10
    )
    ws = new_socket()
    await ws.prepare(request)
    last = (await redis.xrevrange(f"account:{account}:log", count=1) or [(b"0-0", {})])[0][0]
    await ws.send_str(welcome(account).decode())

    async def wait() -> None:
        nonlocal last
        while True:
            reply = await redis.xread({f"account:{account}:log": last}, block=BLOCK_MS, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await ws.send_frame(frame(entry_id, fields), web.WSMsgType.TEXT)
                    last = entry_id

    waiter = asyncio.create_task(wait())
    try:
        async for _ in ws:
            pass
    finally:
        waiter.cancel()
        with contextlib.suppress(BaseException):
            await waiter
        await redis.aclose()
    return ws


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    app = web.Application()
    app[URL] = args.redis_url
    app.add_routes([web.get("/ws/{account}", socket)])
    serve(app, args.port)
