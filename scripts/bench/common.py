"""What the baseline servers share: the hub's socket path, welcome and event frames."""

from __future__ import annotations

import argparse

import orjson
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
