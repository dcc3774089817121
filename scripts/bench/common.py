"""What the baseline servers share: the hub's socket path, welcome and event frames."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import orjson
import redis.asyncio as aioredis
from aiohttp import web


def frame(entry_id: bytes, fields: dict[bytes, bytes]) -> bytes:
    """An event frame from a stored entry; the payload (JSON text) is embedded as is."""
    return b"".join(
        (
            b'{"id":"',
            entry_id,
            b'","type":',
            orjson.dumps(fields.get(b"type", b"").decode()),
            b',"payload":',
            fields.get(b"payload", b"null"),
            b"}",
        )
    )


def welcome(account: str) -> bytes:
    return orjson.dumps({"op": "welcome", "account": account})


def new_socket() -> web.WebSocketResponse:
    return web.WebSocketResponse(compress=False, max_msg_size=65536)


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    return parser.parse_args()


def serve(app: web.Application, port: int) -> None:
    import uvloop

    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


async def stream_to_socket(
    request: web.Request, redis: aioredis.Redis, *, block_ms: int | None, interval: float
) -> web.WebSocketResponse:
    """Serve `/ws/{account}` by reading the account's stream after the last sent ID: with
    XREAD BLOCK on a connection of its own (`block_ms`), or polling every `interval` s."""
    account = request.match_info["account"]
    key = f"account:{account}:log"
    ws = new_socket()
    await ws.prepare(request)
    last = (await redis.xrevrange(key, count=1) or [(b"0-0", {})])[0][0]
    await ws.send_str(welcome(account).decode())

    async def deliver() -> None:
        nonlocal last
        while True:
            reply = await redis.xread({key: last}, block=block_ms, count=100 if block_ms else None)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await ws.send_frame(frame(entry_id, fields), web.WSMsgType.TEXT)
                    last = entry_id
            if interval:
                await asyncio.sleep(interval)

    delivery = asyncio.create_task(deliver())
    try:
        async for _ in ws:
            pass
    finally:
        delivery.cancel()
        with contextlib.suppress(BaseException):
            await delivery
    return ws
