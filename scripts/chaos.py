#!/usr/bin/env python3
"""Faults against real processes on loopback, and what the clients got.

    .venv/bin/python scripts/chaos.py            # every scenario at full length (~3.5 min)
    .venv/bin/python scripts/chaos.py --short    # shorter faults and fewer events (~40 s)
    .venv/bin/python scripts/chaos.py --only redis-sigstop,hub-kill

Each scenario starts its own redis-server (persistence as named) and `hub serve`, with
ACCOUNTS accounts and CLIENTS resuming clients on each (hub.client.HubClient: it reconnects,
resumes from its last event with its epoch, and reports `recovered: false`; in the
slow-readers scenario also one raw-socket client per account that stops reading), and a publisher
over HTTP giving each event an idempotency key and retrying 503 and 504 until the hub
acknowledges it. The fault strikes while events flow; then the clients get a few seconds to
catch up. For each scenario:

- published: events the publisher tried; acknowledged: those the hub answered 201 or 200;
- delivered: acknowledged events the clients got (each client counted once per event);
- lost: acknowledged events still stored that a client never got, or events Redis lost that
  no client was told about: must be 0;
- duplicated, reordered: events a client got twice, or out of stream order: must be 0;
- recovered:false: welcomes telling a client that history was lost (a Redis that forgot);
- verdict: ok when nothing was lost silently, duplicated or reordered.

Prints the table and writes results/chaos.json; exit status 1 when a verdict is not ok.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from loadlib import raw  # noqa: E402
from loadlib.processes import HubServer, RedisProcess  # noqa: E402

from hub.client import HubClient  # noqa: E402
from hub.core.auth import mint  # noqa: E402

SECRET = "chaos-secret-that-is-at-least-32-characters-long"
ACCOUNTS = 4
CLIENTS = 3  # per account


@dataclass
class Fault:
    """One scenario: the Redis persistence it runs with, and what strikes mid-run."""

    name: str
    persistence: str
    strike: Callable[[Run], Awaitable[None]]
    what: str
    slow_readers: int = 0  # per account, beside the resuming clients (`SlowReader`)
    pad: int = 0  # bytes of padding in each payload
    env: dict[str, str] = field(default_factory=dict)  # for the hub


@dataclass
class Outcome:
    scenario: str
    published: int = 0
    acknowledged: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    recovered_false: int = 0
    verdict: str = "ok"
    note: str = ""


@dataclass
class Watcher:
    account: str
    client: HubClient
    seen: list[str | None] = field(default_factory=list)  # None: told to resync
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Leave, and take in what was received before."""
        await self.client.close()
        if self.task is not None:
            await self.task


class SlowReader:
    """A client on a raw socket with a small kernel buffer, reading until told to `stall`: then
    it reads nothing for a while, so that the hub's writes to it wait past HUB_SEND_TIMEOUT,
    then reads on. Closed by the hub (4008, or without a close frame when even that could not
    reach it), it resumes with its epoch from the close reason's ID, or else from its last
    event, as the README tells clients to."""

    def __init__(self, run: Run, account: str) -> None:
        self.account = account
        self.seen: list[str | None] = []  # None: told to resync
        self.closes: list[int | None] = []  # the close code of each connection that ended
        self._connection: raw.Connection | None = None
        self._done = False
        self.task = asyncio.create_task(self._read(run))

    async def _read(self, run: Run) -> None:
        last_id = epoch = None
        while not self._done:
            assert run.hub is not None
            query = f"?last_id={last_id}&epoch={epoch}" if last_id else ""
            headers = {"Authorization": f"Bearer {_token(self.account)}"}
            try:
                connection, reply = await raw.websocket(
                    "127.0.0.1",
                    run.hub.port,
                    f"/ws/{self.account}{query}",
                    headers=headers,
                    receive_buffer=4096,
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.2)  # the hub is away: reconnect pacing
                continue
            if reply.status != 101:
                await connection.close()
                await asyncio.sleep(0.2)  # refused while the hub starts: reconnect pacing
                continue
            self._connection = connection
            try:
                while True:
                    frame = await connection.read_frame(timeout=300)
                    if frame.opcode == raw.OP_PING:
                        connection.send_frame(raw.OP_PONG, frame.payload)
                    elif frame.opcode == raw.OP_CLOSE:
                        self.closes.append(frame.close_code)
                        # Where the hub says to resume: were it past what was written, events
                        # would be lost; were it behind, repeated.
                        last_id = frame.close_reason or last_id
                        break
                    elif (message := json.loads(frame.payload)).get("op") == "welcome":
                        epoch = message["epoch"]
                        if not message["recovered"]:
                            self.seen.append(None)
                    elif "id" in message:
                        self.seen.append(message["id"])
                        last_id = message["id"]
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                if not self._done:
                    self.closes.append(None)
            finally:
                self._connection = None
                await connection.close()

    async def stall(self, seconds: float) -> None:
        connection = self._connection
        if connection is None:
            return
        connection.stop_reading()
        await asyncio.sleep(seconds)  # the stall itself
        connection.resume_reading()

    async def close(self) -> None:
        self._done = True
        if self._connection is not None:
            await self._connection.close()
        await self.task


class Run:
    """One scenario's processes, clients and publisher."""

    def __init__(self, fault: Fault, directory: Path, short: bool) -> None:
        self.fault, self.short = fault, short
        self.redis = RedisProcess(directory / "redis", fault.persistence)
        self.hub: HubServer | None = None
        self.directory = directory
        self.watchers: list[Watcher] = []
        self.slow: list[SlowReader] = []
        self.acked: dict[str, list[str]] = {}
        self.published = 0
        self.stopping = False

    # --- processes and clients ----------------------------------------------------------

    def start(self) -> None:
        self.redis.start()
        self.hub = HubServer(self.redis.url, SECRET, self.directory / "hub.log", **self.fault.env)
        self.hub.start()

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.kill()
        self.redis.stop()

    def watch(
        self,
        account: str,
        last_id: str | None = None,
        epoch: str | None = None,
        seen: list[str | None] | None = None,
    ) -> Watcher:
        """A client of `account`; with a position, one resuming there (`seen` goes on)."""
        assert self.hub is not None
        seen = [] if seen is None else seen
        url = self.hub.url.replace("http", "ws", 1) + f"/ws/{account}"
        client = HubClient(
            url,
            token=_token(account),
            last_id=last_id,
            epoch=epoch,
            on_reset=lambda _welcome: seen.append(None),
        )
        watcher = Watcher(account, client, seen)
        watcher.task = asyncio.create_task(self._collect(watcher))
        self.watchers.append(watcher)
        return watcher

    async def _collect(self, watcher: Watcher) -> None:
        async with watcher.client:
            with contextlib.suppress(Exception):
                async for event in watcher.client:
                    watcher.seen.append(event.id)

    async def publish(self, account: str, n: int, session: aiohttp.ClientSession) -> None:
        """One event, its key reused until the hub acknowledges it (or the run ends)."""
        assert self.hub is not None
        self.published += 1
        headers = {"Authorization": f"Bearer {_token('chaos', '*')}", "Idempotency-Key": f"e{n}"}
        while not self.stopping:
            try:
                async with session.post(
                    f"{self.hub.url}/accounts/{account}/events",
                    json={"type": "Chaos", "payload": {"n": n, "pad": "x" * self.fault.pad}},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as response:
                    if response.status in (200, 201):
                        self.acked.setdefault(account, []).append((await response.json())["id"])
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass  # the hub is away: the same key again
            await asyncio.sleep(0.1)  # retry pacing

    async def history(self, account: str) -> list[str]:
        assert self.hub is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.hub.url}/accounts/{account}/events?limit=1000",
                headers={"Authorization": f"Bearer {_token('chaos', '*')}"},
            ) as response,
        ):
            body = await response.json()
        return [event["id"] for event in body["events"]]

    # --- the scenario -------------------------------------------------------------------

    async def play(self) -> Outcome:
        accounts = [f"c{n}" for n in range(ACCOUNTS)]
        for account in accounts:
            for _ in range(CLIENTS):
                self.watch(account)
            self.slow += [SlowReader(self, account) for _ in range(self.fault.slow_readers)]
        events = 150 if self.short else 600
        rate = 50.0  # per second: the fault lands mid-run
        async with aiohttp.ClientSession() as session:

            async def flow() -> None:
                started = time.monotonic()
                pending: set[asyncio.Task[None]] = set()
                for n in range(events):
                    delay = started + n / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(
                        self.publish(accounts[n % len(accounts)], n, session)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.gather(*pending)

            publishing = asyncio.create_task(flow())
            await asyncio.sleep(events / rate / 3)  # a third of the flow before the fault
            await self.fault.strike(self)
            try:
                await asyncio.wait_for(asyncio.shield(publishing), timeout=120)
            except TimeoutError:
                self.stopping = True
                await publishing
        return await self._settle(accounts)

    async def _settle(self, accounts: list[str]) -> Outcome:
        """Give the clients time to catch up, then count."""
        stored = {account: await self.history(account) for account in accounts}
        deadline = time.monotonic() + (10 if self.short else 20)
        while time.monotonic() < deadline and not self._caught_up(stored):  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # polls what the clients got, up to the deadline
        for client in self.clients:
            await client.close()
        return self._count(stored)

    @property
    def clients(self) -> list[Watcher | SlowReader]:
        return [*self.watchers, *self.slow]

    def _caught_up(self, stored: dict[str, list[str]]) -> bool:
        return all(
            set(self.acked.get(w.account, [])) & set(stored[w.account]) <= set(w.seen)
            for w in self.clients
        )

    def _count(self, stored: dict[str, list[str]]) -> Outcome:
        out = Outcome(self.fault.name, published=self.published)
        out.acknowledged = sum(map(len, self.acked.values()))
        by_account: dict[str, list[Watcher | SlowReader]] = {}
        for watcher in self.clients:
            by_account.setdefault(watcher.account, []).append(watcher)
        for account, watchers in by_account.items():
            acked, kept = set(self.acked.get(account, [])), set(stored[account])
            vanished = acked - kept  # acknowledged, then lost by Redis
            for watcher in watchers:
                got = [event for event in watcher.seen if event is not None]
                out.delivered += len(set(got) & acked)
                out.duplicated += len(got) - len(set(got))
                out.reordered += sum(1 for a, b in itertools.pairwise(got) if _key(b) < _key(a))
                out.recovered_false += watcher.seen.count(None)
                out.lost += len((acked & kept) - set(got))
                if vanished and None not in watcher.seen:
                    out.lost += len(vanished)  # Redis lost them, and this client was not told
        if out.lost or out.duplicated or out.reordered:
            out.verdict = "FAILED"
        if self.fault.persistence == "none" and out.recovered_false:
            out.note = "Redis forgot everything: clients were told"
        if self.slow:
            closes = [code for reader in self.slow for code in reader.closes]
            slow, abrupt = closes.count(4008), closes.count(None)
            out.note = f"{slow} closed with 4008, {abrupt} ended without a close frame"
            if not slow + abrupt:
                out.verdict = "NOT EXERCISED"  # no reader was slow enough: the run proves nothing
        return out


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def _token(subject: str, publish: str | tuple[str, ...] = ()) -> str:
    return mint(SECRET, subject, time.time(), 3600, publish)


# --- the faults ---------------------------------------------------------------------------


async def redis_kill(run: Run) -> None:
    run.redis.kill()
    await asyncio.sleep(1)  # Redis is down for a second
    run.redis.start()


async def redis_sigstop(run: Run) -> None:
    run.redis.signal(signal.SIGSTOP)
    await asyncio.sleep(5 if run.short else 20)  # frozen: commands wait, sockets stay open
    run.redis.signal(signal.SIGCONT)


async def hub_kill(run: Run) -> None:
    assert run.hub is not None
    run.hub.kill()
    await asyncio.to_thread(run.hub.start)


async def hub_drain(run: Run) -> None:
    assert run.hub is not None
    await asyncio.to_thread(run.hub.drain)
    await asyncio.to_thread(run.hub.start)


async def slow_readers(run: Run) -> None:
    """Every slow reader stops reading for three times the hub's send timeout."""
    pause = 3 * float(run.fault.env["HUB_SEND_TIMEOUT"])
    await asyncio.gather(*(reader.stall(pause) for reader in run.slow))


async def churn(run: Run) -> None:
    """Every client leaves and comes back with its position, in waves, for a few seconds."""
    for _ in range(3 if run.short else 8):
        for watcher in [w for w in run.watchers if w.client.state != "closed"][::2]:
            await watcher.close()  # what it had received before the close, taken in
            position, epoch = watcher.client.last_id, watcher.client.epoch
            run.watchers.remove(watcher)
            # The same client's life goes on from where it was, on a new connection.
            run.watch(watcher.account, last_id=position, epoch=epoch, seen=watcher.seen)
        await asyncio.sleep(0.5)


FAULTS = [
    Fault("redis-kill-always", "always", redis_kill, "Redis kill -9 (appendfsync always)"),
    Fault("redis-kill-everysec", "everysec", redis_kill, "Redis kill -9 (appendfsync everysec)"),
    Fault("redis-sigstop", "everysec", redis_sigstop, "Redis SIGSTOP (5 s short, 20 s full)"),
    Fault("redis-restart-empty", "none", redis_kill, "Redis restarted without persistence"),
    Fault("hub-kill", "everysec", hub_kill, "hub kill -9, started again"),
    Fault("hub-drain", "everysec", hub_drain, "hub SIGTERM (drain), started again"),
    Fault(
        "slow-readers",
        "everysec",
        slow_readers,
        "a client per account stops reading for 3x HUB_SEND_TIMEOUT (2 s)",
        slow_readers=1,
        pad=250_000,  # the kernel's buffers hold a few MB: enough to fill them meanwhile
        env={"HUB_SEND_TIMEOUT": "2", "HUB_MAX_MESSAGE": "300000"},
    ),
    Fault("churn", "everysec", churn, "clients leave and resume, in waves"),
]


def table(outcomes: list[Outcome]) -> str:
    columns = [
        ("scenario", "scenario"),
        ("published", "published"),
        ("acknowledged", "acknowledged"),
        ("delivered", "delivered"),
        ("lost", "lost"),
        ("duplicated", "duplicated"),
        ("reordered", "reordered"),
        ("recovered: false", "recovered_false"),
        ("verdict", "verdict"),
    ]
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|---" * len(columns) + "|"]
    for outcome in outcomes:
        values = asdict(outcome)
        cells = [values[key] for _, key in columns]
        lines.append("| " + " | ".join(f"{c:,}" if isinstance(c, int) else c for c in cells) + " |")
    return "\n".join(lines)


async def play(faults: list[Fault], short: bool) -> list[Outcome]:
    outcomes = []
    for fault in faults:
        print(f"[{time.strftime('%H:%M:%S')}] {fault.name}: {fault.what}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"hub-chaos-{fault.name}-") as tmp:
            run = Run(fault, Path(tmp), short)
            await asyncio.to_thread(run.start)
            try:
                outcomes.append(await run.play())
            finally:
                await asyncio.to_thread(run.stop)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="shorter faults, fewer events")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    faults = FAULTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {f.name for f in FAULTS}
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        faults = [f for f in FAULTS if f.name in wanted]
    outcomes = asyncio.run(play(faults, args.short))
    print(table(outcomes))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"short": args.short, "outcomes": [asdict(o) for o in outcomes]}
    (args.out / "chaos.json").write_text(json.dumps(report, indent=2))
    return 0 if all(o.verdict == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
