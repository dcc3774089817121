#!/usr/bin/env python3
"""A tiny WebSocket client for trying the hub: prints every frame, sends each line you type.

    .venv/bin/python scripts/ws_tail.py ws://127.0.0.1:8080/ws/1 --token "$TOKEN"
    HUB_TOKEN=... .venv/bin/python scripts/ws_tail.py 'ws://127.0.0.1:8080/ws/1?last_id=$'

Type `ping`, `event:2` or a JSON message such as
{"op": "publish", "to": "1", "type": "Hello", "payload": {"n": 1}, "ref": 1}
It stops on end of input (Ctrl-D), Ctrl-C, or when the hub closes the socket, and then says
how it ended: the close code and reason (the ID to resume from with ?last_id=), or why the
hub refused the socket. Exit status: 0 when the socket was opened, 1 when it could not be.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading

from hub.client import HubClient, HubRefused


async def lines() -> asyncio.Queue[str | None]:
    """Standard input, line by line (None at its end), read without blocking Ctrl-C."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read() -> None:  # a daemon thread: it never keeps the process alive
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return queue


async def tail(url: str, token: str | None) -> int:
    async with HubClient(
        url, token=token, reconnect=False, on_frame=lambda text: print(text, flush=True)
    ) as client:
        typed = await lines()

        async def send_lines() -> None:
            while (line := await typed.get()) is not None:
                if line:
                    await client.send(line)
            if await client.opened():  # end of input: done, once the socket has answered
                await client.close()

        sender = asyncio.create_task(send_lines())
        try:
            async for _ in client:
                pass  # every frame is printed as it comes (on_frame)
        except HubRefused as refused:
            print(f"refused: {refused.code} {refused.reason}", file=sys.stderr)
            return 1
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        if client.close_code is not None:
            resume = f" (resume with ?last_id={client.close_reason})" if client.close_reason else ""
            print(f"closed: {client.close_code} {client.close_reason}{resume}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/ws/1?last_id=0")
    parser.add_argument("--token", help="the token (default: $HUB_TOKEN)")
    args = parser.parse_args()
    token = args.token or os.environ.get("HUB_TOKEN") or None
    try:
        return asyncio.run(tail(args.url, token))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
