"""The load generator's producer: events at a steady rate, each carrying its sequence number
within its account and the time it was published."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
import orjson
import redis.asyncio as aioredis

from hub import keys
from hub.store import PUBLISH_SCRIPT
from loadlib import wsclient

MAX_IN_FLIGHT = 64
PIPELINE = 200  # events per pipeline, at most


@dataclass
class Published:
    per_account: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    count: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    max_lag: float = 0.0  # how far behind its schedule the publisher fell, in seconds


class Publisher:
    """Publishes through the hub's HTTP API, its publish script, or a floor's firehose."""

    def __init__(
        self,
        *,
        http_base: str | None,
        token: str | None,
        redis_url: str | None,
        payload_size: int,
        firehose: str | None = None,
    ) -> None:
        if sum(x is not None for x in (http_base, redis_url, firehose)) != 1:
            raise ValueError("publish through exactly one of HTTP, Redis and a firehose socket")
        self.firehose = firehose
        self.http_base = http_base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.redis_url = redis_url
        self.padding = "x" * payload_size
        self.result = Published()

    async def run(self, accounts: list[str], rate: float, count: int) -> Published:
        """Publish `count` events round-robin over `accounts`, `rate` per second."""
        if self.firehose is not None:
            return await self._run_firehose(self.firehose, accounts, rate, count)
        if self.redis_url is not None:
            return await self._run_redis(self.redis_url, accounts, rate, count)
        locks = {account: asyncio.Lock() for account in accounts}
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT))
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
                    asyncio.create_task(self._one(account, seq, locks[account], gate, session))
                )
            await asyncio.gather(*tasks)
        finally:
            result.finished = time.time()
            await session.close()
        return result

    async def _run_redis(self, url: str, accounts: list[str], rate: float, count: int) -> Published:
        """Everything due is published in one pipeline, pipelines one after the other: in
        order, and fast enough to outrun any hub (a burst is a few pipelines)."""
        redis = aioredis.Redis.from_url(url)
        script = redis.register_script(PUBLISH_SCRIPT)
        result = self.result
        result.started = time.time()
        sent = 0
        try:
            while sent < count:
                elapsed = time.time() - result.started
                due = min(count, sent + PIPELINE, int(elapsed * rate) + 1)
                if due <= sent:
                    await asyncio.sleep((sent / rate) - elapsed)
                    continue
                result.max_lag = max(result.max_lag, elapsed - sent / rate)
                pipe = redis.pipeline(transaction=False)
                for n in range(sent, due):
                    account = accounts[n % len(accounts)]
                    result.per_account[account] += 1
                    payload = {"seq": result.per_account[account], "ts": time.time_ns()}
                    payload["pad"] = self.padding
                    await script(
                        keys=[keys.account_log(account), keys.INDEX, keys.account_epoch(account)],
                        args=[account, "Load", orjson.dumps(payload), 10_000, 100_000],
                        client=pipe,
                    )
                try:
                    await pipe.execute()
                    result.count += due - sent
                except Exception:
                    result.failed += due - sent
                sent = due
        finally:
            result.finished = time.time()
            await redis.aclose()
        return result

    async def _run_firehose(
        self, url: str, accounts: list[str], rate: float, count: int
    ) -> Published:
        """One socket, one message per event, in order (scripts/bench/floor.py's /publish)."""
        client = await wsclient.connect(url, lambda _: None)
        result = self.result
        result.started = time.time()
        try:
            for n in range(count):
                delay = result.started + n / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    result.max_lag = max(result.max_lag, -delay)
                    if n % 100 == 0:
                        await asyncio.sleep(0)  # let the socket drain now and then
                account = accounts[n % len(accounts)]
                result.per_account[account] += 1
                payload = {"seq": result.per_account[account], "ts": time.time_ns()}
                payload["pad"] = self.padding
                message = {"account": account, "type": "Load", "payload": payload}
                client.send(wsclient.OP_TEXT, orjson.dumps(message))
                result.count += 1
        finally:
            result.finished = time.time()
            client.close()
        return result

    async def _one(
        self,
        account: str,
        seq: int,
        lock: asyncio.Lock,
        gate: asyncio.Semaphore,
        session: aiohttp.ClientSession,
    ) -> None:
        """One HTTP publish; one in flight per account keeps each account's order."""
        try:
            async with lock:
                payload = {"seq": seq, "ts": time.time_ns(), "pad": self.padding}
                async with session.post(
                    f"{self.http_base}/accounts/{account}/events",
                    data=orjson.dumps({"type": "Load", "payload": payload}),
                    headers={**self.headers, "Content-Type": "application/json"},
                ) as response:
                    if response.status != 201:
                        self.result.failed += 1
                        return
                self.result.count += 1
        except Exception:
            self.result.failed += 1
        finally:
            gate.release()
