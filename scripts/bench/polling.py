#!/usr/bin/env python3
"""The seed tutorial's design: every socket polls its account's stream with XREAD once a
second (one shared connection pool), and writes what it finds."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from common import arguments, serve, stream_to_socket

INTERVAL = 1.0
REDIS = web.AppKey("redis", aioredis.Redis)


async def socket(request: web.Request) -> web.WebSocketResponse:
    return await stream_to_socket(request, request.app[REDIS], block_ms=None, interval=INTERVAL)


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
