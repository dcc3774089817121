"""The load generator's producer: events at a steady rate, each carrying its sequence number
within its account and the time it was published."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from hub import keys
from hub.store import PUBLISH_SCRIPT

MAX_IN_FLIGHT = 64


@dataclass
class Published:
    per_account: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    count: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    max_lag: float = 0.0  # how far behind its schedule the publisher fell, in seconds


class Publisher:
    """Publishes through the hub's HTTP API, or straight through the publish script."""

    def __init__(
        self, *, http_base: str | None, token: str | None, redis_url: str | None, payload_size: int
    ) -> None:
        if (http_base is None) == (redis_url is None):
            raise ValueError("publish through exactly one of HTTP and Redis")
        self.http_base = http_base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.redis_url = redis_url
        self.padding = "x" * payload_size
        self.result = Published()

    async def run(self, accounts: list[str], rate: float, count: int) -> Published:
        """Publish `count` events round-robin over `accounts`, `rate` per second."""
        locks = {account: asyncio.Lock() for account in accounts}
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        redis = aioredis.Redis.from_url(self.redis_url) if self.redis_url else None
        script = redis.register_script(PUBLISH_SCRIPT) if redis else None
        session = (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT))
            if self.http_base
            else None
        )
        result = self.result
        result.started = time.time()
        tasks = []
        try:
            for n in range(count):
                due = result.started + n / rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    result.max_lag = max(result.max_lag, -delay)
                account = accounts[n % len(accounts)]
                result.per_account[account] += 1
                seq = result.per_account[account]
                await gate.acquire()
                tasks.append(
                    asyncio.create_task(
                        self._one(account, seq, locks[account], gate, session, script)
                    )
                )
            await asyncio.gather(*tasks)
        finally:
            result.finished = time.time()
            if session:
                await session.close()
            if redis:
                await redis.aclose()
        return result

    async def _one(
        self,
        account: str,
        seq: int,
        lock: asyncio.Lock,
        gate: asyncio.Semaphore,
        session: aiohttp.ClientSession | None,
        script: Any,
    ) -> None:
        try:
            # One event in flight per account keeps each account's sequence in stream order.
            async with lock:
                payload = {"seq": seq, "ts": time.time_ns(), "pad": self.padding}
                if session is not None:
                    async with session.post(
                        f"{self.http_base}/accounts/{account}/events",
                        data=orjson.dumps({"type": "Load", "payload": payload}),
                        headers={**self.headers, "Content-Type": "application/json"},
                    ) as response:
                        if response.status != 201:
                            self.result.failed += 1
                            return
                else:
                    await script(
                        keys=[keys.account_log(account), keys.INDEX, keys.account_epoch(account)],
                        args=[account, "Load", orjson.dumps(payload), 10_000, 100_000],
                    )
                self.result.count += 1
        except Exception:
            self.result.failed += 1
        finally:
            gate.release()
