#!/usr/bin/env python3
"""The seed tutorial's design: every socket polls its account's stream with XREAD once a
second (one shared connection pool), and writes what it finds."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from aiohttp import web
from common import arguments, frame, new_socket, serve, welcome

INTERVAL = 1.0
REDIS = web.AppKey("redis", aioredis.Redis)


async def socket(request: web.Request) -> web.WebSocketResponse:
    account = request.match_info["account"]
    redis = request.app[REDIS]
    ws = new_socket()
    await ws.prepare(request)
    last = (await redis.xrevrange(f"account:{account}:log", count=1) or [(b"0-0", {})])[0][0]
    await ws.send_str(welcome(account).decode())

    async def poll() -> None:
        nonlocal last
        while True:
            reply = await redis.xread({f"account:{account}:log": last})
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await ws.send_frame(frame(entry_id, fields), web.WSMsgType.TEXT)
                    last = entry_id
            await asyncio.sleep(INTERVAL)

    poller = asyncio.create_task(poll())
    try:
        async for _ in ws:
            pass
    finally:
        poller.cancel()
        with contextlib.suppress(BaseException):
            await poller
    return ws


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])

    async def redis_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[REDIS] = aioredis.Redis.from_url(args.redis_url, max_connections=64)
        yield
        await app[REDIS].aclose()

    app = web.Application()
    app.cleanup_ctx.append(redis_ctx)
    app.add_routes([web.get("/ws/{account}", socket)])
    serve(app, args.port)
