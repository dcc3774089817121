#!/usr/bin/env python3
"""A tiny WebSocket client for trying the hub: prints every frame, sends each line you type.

    .venv/bin/python scripts/ws_tail.py ws://127.0.0.1:8080/ws/1 --token "$TOKEN"
    .venv/bin/python scripts/ws_tail.py 'ws://127.0.0.1:8080/ws/1?last_id=$'

Type `ping`, `event:2` or a JSON message such as
{"op": "publish", "to": "1", "type": "Hello", "payload": {"n": 1}, "ref": 1}
It stops on end of input (Ctrl-D), Ctrl-C, or when the hub closes the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp


async def tail(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        loop = asyncio.get_running_loop()

        async def send_lines() -> None:
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if line.strip():
                    await ws.send_str(line.strip())
            await ws.close()

        sender = asyncio.create_task(send_lines())
        async for message in ws:
            print(message.data, flush=True)
        sender.cancel()
        print(f"closed: code={ws.close_code}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/ws/1?last_id=0")
    parser.add_argument("--token", help="sent as Authorization: Bearer")
    args = parser.parse_args()
    try:
        return asyncio.run(tail(args.url, args.token))
    except KeyboardInterrupt:
        return 130
    except aiohttp.WSServerHandshakeError as error:
        print(f"refused: {error.status} {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
