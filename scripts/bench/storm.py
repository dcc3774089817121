#!/usr/bin/env python3
"""Reconnect storm: N HubClients on one hub, the hub restarted, everyone back without a gap.

    .venv/bin/python scripts/bench/storm.py                  # 2,000 clients, 200 accounts
    .venv/bin/python scripts/bench/storm.py --clients 200    # a quick one
    .venv/bin/python scripts/bench/storm.py --proxy          # two hubs behind nginx, one
                                                             # restarted (storm_proxy.py)

Loopback only. Starts its own `redis-server` on a free port and the hub (`python -m hub serve`,
HUB_AUTH=off) on another; opens N `hub.client.HubClient`s (the project's own client: full-jitter
backoff 0.5 s doubling to 20 s, the browser client's rules; resume with last_id and epoch)
spread over P worker processes; publishes a steady trickle through the hub's publish script in
Redis, each payload carrying its per-account sequence number, before, during and after the
restart. The restart is SIGTERM (the hub drains: every socket gets 1001), wait for the exit,
`--downtime` seconds, then the same command on the same port.

Measures: the time from the new hub answering `GET /readyz` 200 until every client is open
again (max, p50, p99 per client), the peak rate of client opens, and per client the events
lost, duplicated and reordered once all of them have caught up (all must be 0). Prints a table,
writes `--out` (results/storm.json) and the hub's and workers' logs next to it (storm-logs/).
Bounded by `--deadline`; every child process is killed at the end, on error or Ctrl-C too.
Exit status 0 only when every client came back and nothing was lost, duplicated or reordered.

`--proxy` runs the other scenario, described in storm_proxy.py: 5,000 clients through the
shipped nginx config in front of two hubs, one of them restarted, once per `--limits` value
of HUB_MAX_ACCEPT_RATE (default: none, then 500), with the surviving hub's delivery latency
measured through the storm; it writes results/storm-proxy.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from loadlib.processes import free_port  # noqa: E402

NOFILE = 20_000
RETENTION, INDEX_RETENTION = 10_000, 100_000  # the hub's defaults (HUB_RETENTION, index)
RESERVE = 12.0  # seconds of the deadline kept for the final catch-up and the reports
# (a quarter of the deadline when that is less)
EVENT_TYPE = "Storm"
PROBE_PREFIX = "p"  # the probes' accounts (the others' are a0, a1, …)


# --- common ---------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE if hard == resource.RLIM_INFINITY else min(hard, NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def die_with_parent() -> None:
    """In a child, before exec: SIGKILL when the benchmark dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def account_of(client: int, accounts: int) -> str:
    return f"a{client % accounts}"


def rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def log(message: str) -> None:
    print(f"[storm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the worker: a share of the clients on one event loop -----------------------------------


@dataclass
class Record:
    account: str
    direct: bool = False  # a probe connected to a hub's own port, not through the proxy
    states: list[tuple[float, str, int | None, str]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    max_seq: int = 0
    ids_backwards: int = 0  # stream IDs not strictly increasing
    foreign: int = 0  # events of another account, or not ours
    resets: int = 0  # welcomes with recovered: false
    refused: str = ""  # HubRefused, or the client's task failing
    last_id: tuple[int, int] = (0, 0)
    is_open: bool = False
    client: Any = None
    wire_last: tuple[int, int] = (0, 0)
    wire_resent: int = 0  # event frames the hub sent again (the client's dedup drops them)
    # (publish time, publish → receive, publish → stored: the event ID's time, Redis's clock)
    latency: list[tuple[float, float, float]] = field(default_factory=list)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.records = [Record(account, direct) for account, direct in worker_accounts(args)]
        self.loop_lag: dict[int, float] = {}  # the most the loop was late, per 0.5 s
        self.clients: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.open_now = 0

    def emit(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    async def main(self) -> None:
        from hub.client import HubClient

        urls = {
            direct: f"ws://127.0.0.1:{self.args.direct_port if direct else self.args.port}/ws/"
            for direct in (False, True)
        }
        reader = asyncio.StreamReader(limit=1 << 26)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        progress = asyncio.create_task(self.progress())
        lag = asyncio.create_task(self.watch_loop()) if self.args.latency else None
        self.emit({"hello": len(self.records), "rss_mb": rss_mb(), "nofile": raise_nofile()})
        per_step = max(1, len(self.records) // 50)
        step = self.args.ramp / 50
        for i, record in enumerate(self.records):
            client = HubClient(
                urls[record.direct] + record.account,
                on_state=self.on_state(record),
                on_reset=self.on_reset(record),
                on_frame=self.on_frame(record),
            )
            record.client = client
            record.states.append((time.time(), "start", None, ""))
            self.clients.append(client)
            self.tasks.append(asyncio.create_task(self.consume(client, record)))
            if (i + 1) % per_step == 0 and step > 0:
                await asyncio.sleep(step)
        try:
            while line := await reader.readline():
                command = json.loads(line)
                if command.get("cmd") == "report":
                    await self.catch_up(command["expect"], command["until"])
                    self.emit({"report": self.report(command["expect"])})
                    break
        finally:
            progress.cancel()
            if lag is not None:
                lag.cancel()
            await self.close_all()

    def on_state(self, record: Record) -> Any:
        def changed(state: str, reason: str) -> None:
            client = record.client
            code = client.close_code if client is not None and state != "open" else None
            why = reason[:100] if state in ("waiting", "failed") else ""
            record.states.append((time.time(), state, code, why))
            if state == "open" and not record.is_open:
                record.is_open = True
                self.open_now += 1
            elif state != "open" and record.is_open:
                record.is_open = False
                self.open_now -= 1

        return changed

    def on_frame(self, record: Record) -> Any:
        """Every frame as it arrives, before the client's own dedup: the hub's resends."""

        def frame(data: str) -> None:
            if data.startswith('{"id":'):
                ms, _, sq = data[7 : data.index('"', 7)].partition("-")
                position = (int(ms), int(sq))
                if position <= record.wire_last:
                    record.wire_resent += 1
                record.wire_last = max(record.wire_last, position)

        return frame

    def on_reset(self, record: Record) -> Any:
        def reset(welcome: dict[str, Any]) -> None:
            del welcome
            record.resets += 1

        return reset

    async def consume(self, client: Any, record: Record) -> None:
        from hub.client import HubRefused

        try:
            async with client:
                async for event in client:
                    payload = event.payload
                    ms, _, sq = event.id.partition("-")
                    position = (int(ms), int(sq))
                    if position <= record.last_id:
                        record.ids_backwards += 1
                    record.last_id = position
                    if not isinstance(payload, dict) or payload.get("a") != record.account:
                        record.foreign += 1
                        continue
                    seq = int(payload["s"])
                    record.seqs.append(seq)
                    if self.args.latency:
                        sent = float(payload["t"])
                        stored = position[0] / 1000 - sent
                        record.latency.append((sent, time.time() - sent, stored))
                    record.max_seq = max(record.max_seq, seq)
        except HubRefused as error:
            record.refused = f"HubRefused {error.code} {error.reason}"
        except asyncio.CancelledError:
            raise
        except Exception as error:
            record.refused = f"{type(error).__name__}: {error}"

    async def progress(self) -> None:
        last = -1
        while True:
            if self.open_now != last:
                last = self.open_now
                self.emit({"open": last, "t": time.time()})
            await asyncio.sleep(0.05)

    async def watch_loop(self) -> None:
        """How late this process's event loop runs (a client-side share of any latency)."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            late = time.monotonic() - before - 0.01
            bucket = int(time.time() * 2)
            self.loop_lag[bucket] = max(self.loop_lag.get(bucket, 0.0), late)

    async def catch_up(self, expect: dict[str, int], until: float) -> None:
        """Until every client got the last event published to its account, or `until`."""
        while time.time() < until:
            if all(r.max_seq >= expect.get(r.account, 0) for r in self.records):
                return
            await asyncio.sleep(0.05)

    def report(self, expect: dict[str, int]) -> dict[str, Any]:
        clients = []
        for record in self.records:
            wanted = expect.get(record.account, 0)
            seen = set(record.seqs)
            reordered = sum(1 for a, b in itertools.pairwise(record.seqs) if b < a)
            clients.append(
                {
                    "account": record.account,
                    "states": record.states,
                    "received": len(record.seqs),
                    "expected": wanted,
                    "lost": sum(1 for s in range(1, wanted + 1) if s not in seen),
                    "duplicated": len(record.seqs) - len(seen),
                    "reordered": reordered,
                    "unexpected": sum(1 for s in seen if not 1 <= s <= wanted),
                    "ids_backwards": record.ids_backwards,
                    "resent_by_hub": record.wire_resent,
                    "foreign": record.foreign,
                    "resets": record.resets,
                    "refused": record.refused,
                    "state": record.states[-1][1] if record.states else "",
                }
            )
            if self.args.latency:
                clients[-1]["direct"] = record.direct
                clients[-1]["latency"] = [
                    (round(t, 4), round(d, 5), round(w, 4)) for t, d, w in record.latency
                ]
        report = {"clients": clients, "rss_mb": rss_mb(), "cpu_s": cpu_s(os.getpid())}
        if self.args.latency:
            report["worker"] = self.args.worker
            report["loop_lag"] = sorted((b / 2, round(v, 4)) for b, v in self.loop_lag.items())
        return report

    async def close_all(self) -> None:
        async def close(client: Any) -> None:
            with contextlib.suppress(Exception):
                await client.close()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(close(c) for c in self.clients))
        for task in self.tasks:
            task.cancel()


def worker_accounts(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The accounts of one worker's clients, and whether each connects to `--direct-port`:
    the clients round robin over `procs` workers, but the last `probes` of them in a worker
    of their own (index `procs`), lightly loaded, to time delivery, each alone on an account
    of its own (p0, p1, …), with `direct` more probes that connect to `--direct-port`."""
    if args.worker == args.procs:
        probes = range(args.probes + args.direct)
        return [(f"{PROBE_PREFIX}{j}", j >= args.probes) for j in probes]
    mine = range(args.worker, args.clients - args.probes, args.procs)
    return [(account_of(i, args.accounts), False) for i in mine]


def worker_entry(args: argparse.Namespace) -> int:
    raise_nofile()
    worker = Worker(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker.main())
    else:
        uvloop.run(worker.main())
    return 0


# --- the orchestrator ------------------------------------------------------------------------


def send(process: asyncio.subprocess.Process, signum: int) -> None:
    """`os.kill`, not `process.terminate()`: that polls the child first (Popen.send_signal)
    and may reap it before asyncio's child watcher, which then reports its exit status as
    255 ("Unknown child process pid")."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


class Children:
    """Every process this run started, killed at the end whatever happens."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(self, *command: str, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            *command, start_new_session=True, preexec_fn=die_with_parent, **kwargs
        )
        self.processes.append(process)
        return process

    async def stop(self, process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if process.returncode is None:
            send(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                send(process, signal.SIGKILL)
                await process.wait()

    async def stop_all(self) -> None:
        for process in reversed(self.processes):  # workers, then the hub, then Redis
            await self.stop(process)

    def kill_all(self) -> None:
        for process in self.processes:
            send(process, signal.SIGKILL)


class Publisher:
    """`rate` events/s over the accounts, round robin, through the hub's publish script; each
    payload {"a": account, "s": its sequence number in that account, "t": publish time}."""

    def __init__(self, redis_url: str, accounts: int, rate: float, prefix: str = "a") -> None:
        self.redis_url, self.accounts, self.rate = redis_url, accounts, rate
        self.prefix = prefix
        self.seq: dict[str, int] = {}
        self.count = 0
        self.stop = asyncio.Event()
        self.lag = 0.0

    async def run(self) -> None:
        import orjson
        import redis.asyncio as aioredis

        from hub.core import keys
        from hub.redis.store import PUBLISH_SCRIPT

        redis = aioredis.Redis.from_url(self.redis_url)
        try:
            sha = await redis.script_load(PUBLISH_SCRIPT)
            started = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.rate) - self.count
                if due > 0:
                    self.lag = max(self.lag, due / self.rate)
                    pipe = redis.pipeline(transaction=False)
                    for _ in range(min(due, 1000)):
                        account = f"{self.prefix}{self.count % self.accounts}"
                        self.count += 1
                        seq = self.seq[account] = self.seq.get(account, 0) + 1
                        payload = orjson.dumps({"a": account, "s": seq, "t": time.time()})
                        pipe.evalsha(
                            sha,
                            3,
                            keys.SINGLE.account_log(account),
                            keys.SINGLE.index(),
                            keys.SINGLE.account_epoch(account),
                            account,
                            EVENT_TYPE,
                            payload,
                            RETENTION,
                            INDEX_RETENTION,
                        )
                    await pipe.execute()  # any error ends the run: a stored event unknown
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.02)
        finally:
            await redis.aclose()


class Storm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out.parent / f"{self.out.stem}-logs"  # results/storm-logs/
        self.children = Children()
        self.started = time.time()
        self.load_at_start = round(os.getloadavg()[0], 2)  # others' work skews the numbers
        self.deadline_at = self.started + args.deadline
        self.marks: dict[str, float] = {}
        self.published_at: dict[str, int] = {}
        self.worker_open: dict[int, int] = {}
        self.workers: list[asyncio.subprocess.Process] = []
        self.listeners: list[asyncio.Task[None]] = []
        self.reports: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self.hub: asyncio.subprocess.Process | None = None
        self.hub_cpu: dict[str, float] = {}
        self.problems: list[str] = []
        self.publisher: Publisher | None = None
        self.redis_url = ""
        self.port = 0
        self._hub_n = 1  # which start of the hub: 1, then 2 after the restart

    def left(self) -> float:
        return self.deadline_at - time.time()

    def budget(self, most: float) -> float:
        """Seconds a phase may take: at most `most`, leaving the reserve for the reports."""
        reserve = min(RESERVE, self.args.deadline / 4)
        return max(0.0, min(most, self.left() - reserve))

    def mark(self, name: str) -> float:
        now = self.marks[name] = time.time()
        if self.publisher is not None:
            self.published_at[name] = self.publisher.count
        return now

    @property
    def open_total(self) -> int:
        return sum(self.worker_open.values())

    async def wait_until(self, condition: Any, within: float, what: str) -> bool:
        end = time.time() + max(0.0, within)
        while not condition():
            if time.time() > end:
                self.problems.append(f"timed out ({within:.0f} s) waiting for {what}")
                log(self.problems[-1])
                return False
            await asyncio.sleep(0.01)
        return True

    # --- processes ---

    async def start_redis(self) -> None:
        import redis.asyncio as aioredis

        port = free_port()
        directory = self.logs / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        await self.children.spawn(
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "10000",
            "--dir",
            str(directory),
            stdout=subprocess.DEVNULL,
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            end = time.time() + 10
            while True:
                try:
                    await client.ping()
                    return
                except (aioredis.RedisError, OSError):
                    if time.time() > end:
                        raise RuntimeError("redis-server did not start") from None
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def start_hub(self, n: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "HUB_AUTH": "off",
            "HUB_HOST": "127.0.0.1",
            "HUB_PORT": str(self.port),
            "HUB_LOG_LEVEL": "warning",
        }
        env.pop("HUB_SECRET", None)
        with (self.logs / f"hub-{n}.log").open("wb") as output:
            self.hub = await self.children.spawn(
                sys.executable,
                "-m",
                "hub",
                "serve",
                env=env,
                cwd=str(ROOT),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return self.hub

    async def wait_ready(self, hub: asyncio.subprocess.Process, within: float) -> bool:
        """Poll /readyz every 10 ms: marks `listening` (first answer) and `ready` (200)."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        end = time.time() + within
        listening = False
        while time.time() < end:
            if hub.returncode is not None:
                self.problems.append(f"the hub exited with {hub.returncode} while starting")
                return False
            status = await asyncio.to_thread(self._status, url)
            if status and not listening:
                listening = True
                self.mark(f"listening{self._hub_n}")
            if status == 200:
                self.mark(f"ready{self._hub_n}")
                return True
            await asyncio.sleep(0.01)
        self.problems.append(f"the hub was not ready within {within:.0f} s")
        return False

    @staticmethod
    def _status(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def worker_options(self) -> list[str]:
        """Extra options of every worker (the proxy mode's: latency, probes)."""
        return []

    async def start_workers(self, workers: int | None = None) -> None:
        script = str(SCRIPT)
        for i in range(self.args.procs if workers is None else workers):
            with (self.logs / f"worker-{i}.log").open("wb") as errors:
                process = await self.children.spawn(
                    sys.executable,
                    script,
                    "_worker",
                    "--worker",
                    str(i),
                    "--procs",
                    str(self.args.procs),
                    "--clients",
                    str(self.args.clients),
                    "--accounts",
                    str(self.args.accounts),
                    "--port",
                    str(self.port),
                    "--ramp",
                    str(self.args.ramp),
                    *self.worker_options(),
                    cwd=str(ROOT),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    limit=1 << 28,
                )
            self.workers.append(process)
            self.worker_open[i] = 0
            self.reports[i] = asyncio.get_running_loop().create_future()
            self.listeners.append(asyncio.create_task(self.listen(i, process)))

    async def listen(self, i: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            message = json.loads(line)
            if "open" in message:
                self.worker_open[i] = message["open"]
            elif "report" in message and not self.reports[i].done():
                self.reports[i].set_result(message["report"])
        if not self.reports[i].done():
            self.reports[i].set_result(None)  # exited without a report

    # --- the run ---

    async def run(self) -> dict[str, Any]:
        args = self.args
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.port = free_port()
        await self.start_redis()
        hub = await self.start_hub(1)
        if not await self.wait_ready(hub, self.budget(30)):
            raise RuntimeError("the hub did not start: " + "; ".join(self.problems))
        log(f"hub ready on 127.0.0.1:{self.port}; opening {args.clients} clients")
        self.mark("clients_start")
        await self.start_workers()
        if await self.wait_until(
            lambda: self.open_total >= args.clients,
            self.budget(60 + args.ramp),
            f"{args.clients} clients to open",
        ):
            self.mark("all_open")
            log(f"all open in {self.marks['all_open'] - self.marks['clients_start']:.2f} s")
            self.publisher = Publisher(self.redis_url, args.accounts, args.rate)
            publishing = asyncio.create_task(self.publisher.run())
            self.mark("publish_start")
            await asyncio.sleep(self.budget(args.before))
            await self.restart(hub)
            if "ready2" in self.marks:
                log(f"hub ready again; waiting for {args.clients} clients")
                if await self.wait_until(
                    lambda: self.open_total >= args.clients,
                    self.budget(math.inf) - args.after,
                    "every client to come back",
                ):
                    self.mark("all_back")
                    self.hub_cpu["storm"] = cpu_s(self.hub.pid) if self.hub else math.nan
                    back = self.marks["all_back"] - self.marks["ready2"]
                    log(f"all back {back:.2f} s after ready")
                await asyncio.sleep(self.budget(args.after))
            self.publisher.stop.set()
            await publishing
            self.mark("publish_stop")
        return await self.collect()

    async def restart(self, hub: asyncio.subprocess.Process) -> None:
        log("SIGTERM to the hub")
        self.hub_cpu["before_restart"] = cpu_s(hub.pid)
        self.mark("sigterm")
        send(hub, signal.SIGTERM)
        try:
            await asyncio.wait_for(hub.wait(), max(1.0, self.budget(60)))
        except TimeoutError:
            self.problems.append("the hub did not exit after SIGTERM; killed")
            send(hub, signal.SIGKILL)
            await hub.wait()
        self.mark("exited")
        if hub.returncode != 0:
            self.problems.append(f"the first hub exited with {hub.returncode}")
        log(
            f"hub exited ({hub.returncode}) {self.marks['exited'] - self.marks['sigterm']:.2f} s "
            f"after SIGTERM; {self.args.downtime} s down"
        )
        await asyncio.sleep(self.args.downtime)
        self._hub_n = 2
        self.mark("start2")
        hub2 = await self.start_hub(2)
        await self.wait_ready(hub2, self.budget(30))
        self.hub_cpu["at_ready"] = cpu_s(hub2.pid)

    def expected(self) -> dict[str, int]:
        """Per account, the sequence number of the last event published to it."""
        return dict(self.publisher.seq) if self.publisher else {}

    async def collect(self) -> dict[str, Any]:
        expect = self.expected()
        until = time.time() + max(1.0, min(self.args.catchup, self.left() - 3))
        for process in self.workers:
            assert process.stdin is not None
            with contextlib.suppress(ConnectionError):
                process.stdin.write(
                    (
                        json.dumps({"cmd": "report", "expect": expect, "until": until}) + "\n"
                    ).encode()
                )
                await process.stdin.drain()
        reports = []
        for i, future in self.reports.items():
            try:
                report = await asyncio.wait_for(future, max(1.0, until - time.time() + 5))
            except TimeoutError:
                self.problems.append(f"worker {i}: no report in time")
                continue
            if report is None:
                self.problems.append(f"worker {i} exited without a report (see its log)")
            else:
                reports.append(report)
        self.mark("collected")
        return self.analyse(reports)

    def analyse(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        args, marks = self.args, self.marks
        clients = [c for report in reports for c in report["clients"]]
        t_term, t_ready = marks.get("sigterm", math.inf), marks.get("ready2", math.nan)
        seen = Timelines(t_term, t_ready)
        for client in clients:
            seen.add(client)
        reconnect, down, opens, attempts = seen.reconnect, seen.down, seen.opens, seen.attempts
        not_back, closes = seen.not_back, seen.closes
        close_codes, failed_after_ready = seen.close_codes, seen.failed_after_ready
        totals = {
            key: sum(c[key] for c in clients)
            for key in (
                "received",
                "expected",
                "lost",
                "duplicated",
                "reordered",
                "unexpected",
                "ids_backwards",
                "foreign",
                "resets",
                "resent_by_hub",
            )
        }
        refused = [c["refused"] for c in clients if c["refused"]]
        opens.sort()
        peak_1s = sliding_peak(opens, 1.0)
        buckets = bucketed(opens, t_ready, 0.1)
        published = self.publisher.count if self.publisher else 0
        back_up = "ready2" if "ready2" in self.published_at else "publish_stop"
        during = self.published_at.get(back_up, 0) - self.published_at.get("sigterm", 0)
        problems = list(self.problems)
        if len(clients) != args.clients:
            problems.append(f"reports cover {len(clients)} of {args.clients} clients")
        if not_back:
            problems.append(f"{not_back} clients never reopened after the restart")
        if refused:
            problems.append(f"{len(refused)} clients ended: {Counter(refused).most_common(3)}")
        for key in ("lost", "duplicated", "reordered", "unexpected", "ids_backwards", "foreign"):
            if totals[key]:
                problems.append(f"{totals[key]} events {key.replace('_', ' ')}")
        if totals["resets"]:
            problems.append(f"{totals['resets']} welcomes said recovered: false")
        if closes:
            problems.append(f"clients not open at the end: {dict(closes)}")
        notes = []
        if totals["resent_by_hub"]:
            notes.append(
                f"the hub sent {totals['resent_by_hub']} event frames again (at or before the "
                "position a socket resumed from); HubClient's dedup dropped them"
            )
        if args.rate > 0 and published and during == 0:
            problems.append("nothing was published while the hub was down")
        hub_storm_cpu = self.hub_cpu.get("storm", math.nan) - self.hub_cpu.get("at_ready", math.nan)
        return {
            "config": {
                "clients": args.clients,
                "accounts": args.accounts,
                "procs": args.procs,
                "downtime_s": args.downtime,
                "rate": args.rate,
                "before_s": args.before,
                "after_s": args.after,
                "ramp_s": args.ramp,
                "deadline_s": args.deadline,
                "cpus": os.cpu_count(),
                "loadavg_1m_at_start": self.load_at_start,
                "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                "python": sys.version.split()[0],
                "hub_source": source_state(),
            },
            "timeline_s": {k: round(v - self.started, 3) for k, v in marks.items()},
            "initial_open_s": rel(marks, "clients_start", "all_open"),
            "drain_s": rel(marks, "sigterm", "exited"),
            "hub_start_to_listening_s": rel(marks, "start2", "listening2"),
            "hub_start_to_ready_s": rel(marks, "start2", "ready2"),
            "sigterm_to_ready_s": rel(marks, "sigterm", "ready2"),
            "all_back_after_ready_s": max(reconnect) if reconnect and not not_back else None,
            "reconnect_after_ready_s": {
                "p50": pct(reconnect, 50),
                "p90": pct(reconnect, 90),
                "p99": pct(reconnect, 99),
                "max": max(reconnect) if reconnect else None,
                "min": min(reconnect) if reconnect else None,
                "opened_before_ready": sum(1 for r in reconnect if r < 0),
            },
            "client_down_s": {"p50": pct(down, 50), "p99": pct(down, 99), "max": maxn(down)},
            "close_codes_at_restart": dict(close_codes),
            "failed_attempts_after_ready": dict(failed_after_ready.most_common(10)),
            "connect_attempts_after_sigterm": {
                "total": sum(attempts),
                "per_client_p50": pct(attempts, 50),
                "per_client_max": max(attempts) if attempts else None,
            },
            "peak_connects_per_s": peak_1s,
            "peak_connects_per_100ms_x10": max(buckets) * 10 if buckets else 0,
            "opens_per_100ms_from_ready": buckets,
            "hub_cpu_s_ready_to_all_back": None if math.isnan(hub_storm_cpu) else hub_storm_cpu,
            "events": {
                "published": published,
                "published_while_down": during,
                "publisher_max_lag_s": self.publisher.lag if self.publisher else None,
                "delivered": totals["received"],
                "expected_deliveries": totals["expected"],
                **{k: v for k, v in totals.items() if k not in ("received", "expected")},
            },
            "workers": [{"rss_mb": r["rss_mb"], "cpu_s": r["cpu_s"]} for r in reports],
            "anomalies": [
                {k: c[k] for k in c if k != "states"}
                for c in clients
                if c["lost"] or c["duplicated"] or c["reordered"] or c["refused"] or c["resets"]
            ][:50],
            "problems": problems,
            "notes": notes,
            "verdict": "PASS" if not problems else "FAIL",
        }


@dataclass
class Timelines:
    """What the clients' state changes say about the restart."""

    t_term: float
    t_ready: float
    reconnect: list[float] = field(default_factory=list)  # first open after it - ready
    down: list[float] = field(default_factory=list)  # first close after SIGTERM -> open
    opens: list[float] = field(default_factory=list)  # every open after SIGTERM
    attempts: list[int] = field(default_factory=list)  # connects per client after SIGTERM
    closes: Counter[str] = field(default_factory=Counter)  # clients not open at the end
    close_codes: Counter[str] = field(default_factory=Counter)  # what each saw of the restart
    failed_after_ready: Counter[str] = field(default_factory=Counter)  # failed, the hub up
    not_back: int = 0

    def add(self, client: dict[str, Any]) -> None:
        states = client["states"]
        after = [(t, s, c) for t, s, c, _ in states if t >= self.t_term]
        opened = [t for t, s, _ in after if s == "open"]
        self.opens += opened
        self.attempts.append(sum(1 for _, s, _ in after if s == "connecting"))
        left_at = next((t for t, s, _ in after if s != "open"), None)
        close = next((c for _, s, c in after if s == "waiting"), None)
        self.close_codes[str(close) if left_at is not None else "never closed"] += 1
        for (_, before, _, _), (t, state, code, why) in itertools.pairwise(states):
            if state == "waiting" and before == "connecting" and t > self.t_ready:
                self.failed_after_ready[f"{code} {why[:70]}"] += 1
        if opened:
            if not math.isnan(self.t_ready):
                self.reconnect.append(opened[0] - self.t_ready)
            if left_at is not None:
                self.down.append(opened[0] - left_at)
        else:
            self.not_back += 1
        if client["state"] != "open":
            self.closes[f"final state {client['state']}"] += 1


def source_state() -> str:
    """The commit measured, and whether hub/ differed from it (a benchmark of a dirty tree)."""

    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", *command],  # never takes the index lock
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "hub")
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes in hub/' if dirty else ''}" or "unknown"


def rel(marks: dict[str, float], start: str, end: str) -> float | None:
    return marks[end] - marks[start] if start in marks and end in marks else None


def pct(values: list[float] | list[int], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))])


def maxn(values: list[float]) -> float | None:
    return max(values) if values else None


def sliding_peak(times: list[float], window: float) -> int:
    """The most events within any `window` seconds (`times` sorted)."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def bucketed(times: list[float], origin: float, width: float) -> list[int]:
    if not times or math.isnan(origin):
        return []
    first = min(0, math.floor((times[0] - origin) / width))
    counts = [0] * (math.floor((times[-1] - origin) / width) - first + 1)
    for t in times:
        counts[math.floor((t - origin) / width) - first] += 1
    return counts


def fmt(value: float | None, unit: str = " s", digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def table(result: dict[str, Any]) -> str:
    config, events, reconnect = (
        result["config"],
        result["events"],
        result["reconnect_after_ready_s"],
    )
    rows = [
        (
            "clients / accounts / procs",
            f"{config['clients']:,} / {config['accounts']:,} / {config['procs']}",
        ),
        ("downtime (configured)", fmt(config["downtime_s"])),
        ("drain (SIGTERM → exit)", fmt(result["drain_s"])),
        ("hub start → ready", fmt(result["hub_start_to_ready_s"])),
        ("outage (SIGTERM → ready)", fmt(result["sigterm_to_ready_s"])),
        ("all back after ready", fmt(result["all_back_after_ready_s"])),
        (
            "per client after ready p50 / p99 / max",
            f"{fmt(reconnect['p50'])} / {fmt(reconnect['p99'])} / {fmt(reconnect['max'])}",
        ),
        ("opened before /readyz said 200", str(reconnect["opened_before_ready"])),
        (
            "per client down time p50 / max",
            f"{fmt(result['client_down_s']['p50'])} / {fmt(result['client_down_s']['max'])}",
        ),
        ("close codes seen at the restart", str(result["close_codes_at_restart"])),
        (
            "attempts failed after ready",
            f"{sum(result['failed_attempts_after_ready'].values()):,}",
        ),
        (
            "connect attempts after SIGTERM",
            f"{result['connect_attempts_after_sigterm']['total']:,}",
        ),
        ("peak connects/s (1 s window)", f"{result['peak_connects_per_s']:,}"),
        ("peak connects/100 ms (x10)", f"{result['peak_connects_per_100ms_x10']:,}"),
        (
            "events published (while down)",
            f"{events['published']:,} ({events['published_while_down']:,})",
        ),
        ("delivered / expected", f"{events['delivered']:,} / {events['expected_deliveries']:,}"),
        (
            "lost / duplicated / reordered",
            f"{events['lost']} / {events['duplicated']} / {events['reordered']}",
        ),
        ("resent by the hub (client dedup)", f"{events['resent_by_hub']:,}"),
        (
            "load average (1 min) start / end",
            f"{config['loadavg_1m_at_start']} / {config['loadavg_1m_at_end']}",
        ),
        ("verdict", result["verdict"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    lines += [f"  ! {p}" for p in result["problems"]]
    lines += [f"  note: {n}" for n in result["notes"]]
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    storm = Storm(args)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        try:
            async with asyncio.timeout(args.deadline):
                return await storm.run()
        except TimeoutError:
            storm.problems.append(f"the deadline ({args.deadline:.0f} s) passed")
            return {
                "verdict": "FAIL",
                "problems": storm.problems,
                "timeline_s": {k: round(v - storm.started, 3) for k, v in storm.marks.items()},
            }
    finally:
        try:
            await asyncio.wait_for(storm.children.stop_all(), 20)
        except BaseException:
            storm.children.kill_all()
            raise


# (one hub, --proxy) defaults: the proxy mode's are sized for two hubs behind nginx
DEFAULTS = {
    "clients": (2000, 5000),
    "accounts": (200, 500),
    "procs": (2, 4),
    "rate": (100.0, 200.0),
    "deadline": (180.0, 480.0),
    "out": (str(ROOT / "results" / "storm.json"), str(ROOT / "results" / "storm-proxy.json")),
    "before": (3.0, 5.0),
    "ramp": (2.0, 10.0),
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, help="2,000 (--proxy: 5,000)")
    parser.add_argument("--accounts", type=int, help="200 (--proxy: 500)")
    parser.add_argument("--procs", type=int, help="client worker processes: 2 (--proxy: 4)")
    parser.add_argument("--downtime", type=float, default=1.0, help="seconds the hub stays down")
    parser.add_argument("--rate", type=float, help="events published per second: 100 (200)")
    parser.add_argument("--deadline", type=float, help="total seconds, at most: 180 (480)")
    parser.add_argument("--out", help="results/storm.json (results/storm-proxy.json)")
    parser.add_argument("--before", type=float, help="publishing before the restart: 3 s (5)")
    parser.add_argument("--after", type=float, default=3.0, help="publishing once all are back")
    parser.add_argument("--ramp", type=float, help="seconds to open the clients: 2 (10)")
    parser.add_argument("--catchup", type=float, default=20.0, help="final wait for delivery")
    proxy = parser.add_argument_group("--proxy: two hubs behind deploy/nginx.conf, one restarted")
    proxy.add_argument("--proxy", action="store_true", help="run that scenario (storm_proxy.py)")
    proxy.add_argument(
        "--limits",
        default="0,500",
        help="HUB_MAX_ACCEPT_RATE of both hubs, one run each, comma-separated (0: no limit)",
    )
    proxy.add_argument(
        "--probes",
        type=int,
        default=100,
        help="of the clients, this many in a worker process of their own, each on an account "
        "of its own, to time delivery",
    )
    proxy.add_argument(
        "--direct",
        type=int,
        default=50,
        help="more probes, besides --clients, connected to the surviving hub's own port (not "
        "through nginx): what nginx adds",
    )
    proxy.add_argument(
        "--probe-rate",
        type=float,
        default=300.0,
        help="events published per second over the probes' accounts",
    )
    args = parser.parse_args(argv)
    for name, defaults in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[1] if args.proxy else defaults[0])
    if not args.proxy:
        args.probes = args.direct = 0
    if args.clients < 1 or args.accounts < 1 or args.procs < 1 or args.rate < 0:
        parser.error("--clients, --accounts and --procs must be positive, --rate not negative")
    if not 0 <= args.probes < args.clients or args.direct < 0:
        parser.error("--probes must be at least 0 and fewer than --clients; --direct >= 0")
    try:
        args.limits = [int(limit) for limit in args.limits.split(",")]
    except ValueError:
        parser.error("--limits: comma-separated integers")
    if any(limit < 0 for limit in args.limits):
        parser.error("--limits: not negative")
    return args


def main() -> int:
    if sys.argv[1:2] == ["_worker"]:
        parser = argparse.ArgumentParser()
        for name in ("--worker", "--procs", "--clients", "--accounts", "--port"):
            parser.add_argument(name, type=int, required=True)
        parser.add_argument("--ramp", type=float, default=0.0)
        parser.add_argument("--probes", type=int, default=0)
        parser.add_argument("--direct", type=int, default=0)
        parser.add_argument("--direct-port", type=int, default=0)
        parser.add_argument("--latency", action="store_true")
        return worker_entry(parser.parse_args(sys.argv[2:]))
    args = parse(sys.argv[1:])
    if args.proxy:
        from storm_proxy import run_proxy

        return run_proxy(args)
    nofile = raise_nofile()
    if nofile < args.clients // args.procs + 100:
        log(f"warning: RLIMIT_NOFILE is {nofile}, below what {args.clients} clients need")
    random.seed()
    began = time.monotonic()
    try:
        result = asyncio.run(orchestrate(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; every child was stopped")
        return 130
    except Exception as error:  # a setup failure: still a result file saying so
        result = {"verdict": "FAIL", "problems": [f"{type(error).__name__}: {error}"]}
    result["run_s"] = round(time.monotonic() - began, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if "config" in result:
        print(table(result))
    else:
        print("\n".join(f"  ! {p}" for p in result["problems"]) + "\n  verdict FAIL")
    print(f"  wrote {out} in {result['run_s']:.1f} s")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
