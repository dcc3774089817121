"""A load-generating worker process: many WebSocket (or event-stream) clients on one loop.

Each client records, for every event it receives, the per-account sequence number and the
publish timestamp carried in the payload, so the parent can count lost, duplicated and
reordered events and compute publish→receive latency.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from loadlib import sseclient, wsclient

RESERVOIR = 100_000  # latency samples kept per worker
BUCKET_NS = 100_000_000  # throughput-over-time resolution: 100 ms

# Shared counters, one row per worker: connected, failed, received, cpu seconds.
CONNECTED, FAILED, RECEIVED, CPU = range(4)
COUNTERS = 4


@dataclass
class Plan:
    index: int
    base_url: str  # ws://127.0.0.1:8080
    accounts: list[str]  # one per socket
    tokens: dict[str, str]  # account → token (empty: no auth)
    query: str  # e.g. "?last_id=$"
    concurrency: int
    ramp: float
    seed: int
    path: str = "/ws/{account}"  # or /sse/{account}: event streams, on http://
    source: str | None = None  # the address to connect from (127.0.0.x: its own ports)


@dataclass
class Track:
    """What one socket received."""

    account: str
    seen: bytearray = field(default_factory=bytearray)
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    last: int = 0

    def record(self, seq: int) -> None:
        self.received += 1
        if seq >= len(self.seen):
            self.seen.extend(b"\0" * (seq + 1024 - len(self.seen)))
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        if seq < self.last:
            self.reordered += 1
        self.last = max(self.last, seq)


class Worker:
    def __init__(self, plan: Plan, counters: Any, stop: Any) -> None:
        self.plan = plan
        self.row = plan.index * COUNTERS
        self.counters = counters
        self.stop = stop
        self.random = random.Random(plan.seed)
        self.tracks = [Track(account) for account in plan.accounts]
        self.connect_times: list[float] = []
        self.first_attempt: float | None = None  # wall clock, to compare across processes
        self.last_connected: float | None = None
        self.errors: list[str] = []
        self.samples: list[int] = []
        self.latency_count = 0
        self.latency_max = 0
        self.buckets: dict[int, int] = {}
        self.received = 0
        self.last_received_ns = 0  # wall clock of the last event, to end the throughput window
        self.clients: list[wsclient.WebSocketClient | sseclient.EventStreamClient] = []

    def _latency(self, ns: int, now: int) -> None:
        self.latency_count += 1
        self.latency_max = max(self.latency_max, ns)
        if len(self.samples) < RESERVOIR:
            self.samples.append(ns)
        else:
            slot = self.random.randrange(self.latency_count)
            if slot < RESERVOIR:
                self.samples[slot] = ns
        bucket = now // BUCKET_NS
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1

    def _on_text(self, track: Track, text: bytes) -> None:
        data = orjson.loads(text)
        events = data if isinstance(data, list) else [data]
        now = time.time_ns()
        for event in events:
            if "op" in event:
                continue
            payload = event["payload"]
            track.record(payload["seq"])
            self._latency(now - payload["ts"], now)
            self.received += 1
        self.last_received_ns = now

    async def _client(self, track: Track, gate: asyncio.Semaphore) -> None:
        await asyncio.sleep(self.random.uniform(0, self.plan.ramp))
        url = self.plan.base_url + self.plan.path.format(account=track.account) + self.plan.query
        token = self.plan.tokens.get(track.account)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        welcomed = asyncio.get_running_loop().create_future()

        def on_text(payload: bytes) -> None:
            if not welcomed.done():
                welcomed.set_result(None)
            self._on_text(track, payload)

        connect = sseclient.connect if self.plan.path.startswith("/sse/") else wsclient.connect
        async with gate:
            if self.first_attempt is None:
                self.first_attempt = time.time()
            started = time.perf_counter()
            try:
                client: wsclient.WebSocketClient | sseclient.EventStreamClient
                client = await asyncio.wait_for(
                    connect(url, on_text, headers, self.plan.source), 30
                )
                await asyncio.wait_for(welcomed, 30)
            except Exception as error:
                self.counters[self.row + FAILED] += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(error).__name__}: {error}")
                return
            self.connect_times.append(time.perf_counter() - started)
            self.last_connected = time.time()
            self.counters[self.row + CONNECTED] += 1
        self.clients.append(client)
        await client.closed

    async def _report(self) -> None:
        while True:
            self.counters[self.row + RECEIVED] = self.received
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.counters[self.row + CPU] = usage.ru_utime + usage.ru_stime
            await asyncio.sleep(0.2)

    async def run(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(self.plan.concurrency)
        reporter = asyncio.create_task(self._report())
        tasks = [asyncio.create_task(self._client(t, gate)) for t in self.tracks]
        await asyncio.get_running_loop().run_in_executor(None, self.stop.wait)
        # Closed cleanly (1000 and the hub's answer), so that the hub's log shows the code.
        await asyncio.gather(*(client.shutdown() for client in self.clients))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "index": self.plan.index,
            "connect_times": self.connect_times,
            "first_attempt": self.first_attempt,
            "last_connected": self.last_connected,
            "errors": self.errors,
            "sockets": [
                {
                    "account": t.account,
                    "received": t.received,
                    "distinct": sum(t.seen),
                    "duplicates": t.duplicates,
                    "reordered": t.reordered,
                }
                for t in self.tracks
            ],
            "samples": self.samples,
            "latency_count": self.latency_count,
            "latency_max": self.latency_max,
            "last_received": self.last_received_ns / 1e9,
            "buckets": self.buckets,
            "cpu": usage.ru_utime + usage.ru_stime,
        }


def worker_main(plan: Plan, counters: Any, stop: Any, results: Any) -> None:
    """Entry point of a worker process."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    results.put(runner(Worker(plan, counters, stop).run()))
