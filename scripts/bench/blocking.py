#!/usr/bin/env python3
"""The seed tutorial's other alternative: every socket holds its own Redis connection and
blocks on XREAD BLOCK for its account's stream."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from common import arguments, serve, stream_to_socket

BLOCK_MS = 30_000
URL = web.AppKey("url", str)


async def socket(request: web.Request) -> web.WebSocketResponse:
    redis = aioredis.Redis.from_url(
        request.app[URL], single_connection_client=True, socket_timeout=BLOCK_MS / 1000 + 10
    )
    try:
        return await stream_to_socket(request, redis, block_ms=BLOCK_MS, interval=0)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    args = arguments(__doc__.splitlines()[0])
    app = web.Application()
    app[URL] = args.redis_url
    app.add_routes([web.get("/ws/{account}", socket)])
    serve(app, args.port)
