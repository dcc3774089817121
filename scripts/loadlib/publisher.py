"""The load generator's producer: events at a steady rate, each carrying its sequence number
within its account and the time it was published."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp
import hiredis
import orjson

from hub.core import keys
from hub.redis.store import PUBLISH_SCRIPT
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


def resp(*parts: bytes) -> bytes:
    """One Redis command in the wire protocol."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RespConnection:
    """A bare Redis connection: commands written back to back, replies parsed by hiredis."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, url: str) -> RespConnection:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
        else:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
        connection = cls(reader, writer)
        if parts.password:
            user = unquote(parts.username or "default").encode()
            await connection.call(resp(b"AUTH", user, unquote(parts.password).encode()))
        database = parts.path.strip("/") if parts.scheme != "unix" else ""
        database = database or dict(parse_qsl(parts.query)).get("db", "")
        if database:
            await connection.call(resp(b"SELECT", database.encode()))
        return connection

    async def send(self, commands: list[bytes]) -> None:
        self.writer.write(b"".join(commands))
        await self.writer.drain()

    async def reply(self) -> Any:
        while (reply := self.parser.gets()) is False:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.parser.feed(data)
        return reply

    async def call(self, command: bytes) -> Any:
        await self.send([command])
        reply = await self.reply()
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    async def load_script(self, script: str) -> bytes:
        sha = await self.call(resp(b"SCRIPT", b"LOAD", script.encode()))
        return bytes(sha)

    async def count_replies(self, count: int, result: Published) -> None:
        """Count `count` replies into `result`: an ID is a publish, an error a failure."""
        for _ in range(count):
            if isinstance(await self.reply(), hiredis.ReplyError):
                result.failed += 1
            else:
                result.count += 1

    def close(self) -> None:
        self.writer.close()


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
        if count == 0:  # an idle run: not even a connection, so as not to count its commands
            self.result.started = self.result.finished = time.time()
            return self.result
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
        """The publish script over one raw connection, each command written as soon as it is
        due and the replies counted as they come: Redis runs one connection's commands in
        order, and the publisher costs a few µs per event (a client library's pipeline costs
        it tens, and the generator shares the machine with the hub)."""
        connection = await RespConnection.open(url)
        sha = await connection.load_script(PUBLISH_SCRIPT)
        result = self.result
        replies = asyncio.create_task(connection.count_replies(count, result))
        result.started = time.time()
        sent = 0
        try:
            while sent < count:
                elapsed = time.time() - result.started
                due = min(count, sent + PIPELINE, int(elapsed * rate) + 1)
                if due <= sent:
                    await asyncio.sleep(max(0.0, sent / rate - elapsed))
                    continue
                result.max_lag = max(result.max_lag, elapsed - sent / rate)
                commands = []
                for n in range(sent, due):
                    account = accounts[n % len(accounts)]
                    result.per_account[account] += 1
                    payload = {"seq": result.per_account[account], "ts": time.time_ns()}
                    payload["pad"] = self.padding
                    commands.append(
                        resp(
                            b"EVALSHA",
                            sha,
                            b"3",
                            keys.SINGLE.account_log(account).encode(),
                            keys.SINGLE.index().encode(),
                            keys.SINGLE.account_epoch(account).encode(),
                            account.encode(),
                            b"Load",
                            orjson.dumps(payload),
                            b"10000",
                            b"100000",
                        )
                    )
                await connection.send(commands)
                sent = due
            await replies
        except OSError:  # Redis went away: what was not acknowledged failed
            result.failed = count - result.count
        finally:
            result.finished = time.time()
            replies.cancel()
            connection.close()
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
