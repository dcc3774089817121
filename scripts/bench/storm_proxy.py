"""`storm.py --proxy`: a reconnect storm behind nginx, one of two hubs restarted.

    .venv/bin/python scripts/bench/storm.py --proxy          # 5,000 clients, 500 accounts
    .venv/bin/python scripts/bench/storm.py --proxy --clients 500 --limits 0,100  # a quick one

Loopback only. One `redis-server`; two hubs, A and B, on it (HUB_AUTH=off,
HUB_MAX_SOCKETS_PER_ACCOUNT=0, HUB_MAX_ACCEPT_RATE the run's limit); nginx in front of them with
the shipped `deploy/nginx.conf`, only its ports and log directory changed (as
tests/test_deploy.py runs it), in a minimal main config sized for the run (one nginx process,
16,384 connections, 20,000 descriptors: each socket costs nginx two). N HubClients connect
through nginx (round robin: about half on each hub), spread over P worker processes; the last
`--probes` of them live in a worker process of their own, lightly loaded, each alone on an
account of its own (p0, p1, …), with `--direct` more probes there that connect to B's own port:
their delivery times are the hubs' (and nginx's) more than the client processes'. Events are
published through the hub's publish script in Redis, `--rate` over the clients' accounts and
`--probe-rate` over the probes', each payload carrying its sequence number and publish time.
Then hub A gets SIGTERM (it drains: its sockets close with 1001 and reconnect through nginx,
to B while A is down), stays down `--downtime` seconds once it exited, and starts again.

Measured, per run: how long until every client is back (from A's SIGTERM and from A's
readiness, negative when before it; per client p50 / p99); the peak of accepts per second,
seen by the clients and, from each hub's own `GET /metrics` scraped every 0.5 s
(`hub_sockets_opened_total`), per hub; the publish → receive latency of hub B's own sockets
(those that stayed connected through the restart), in a calm window before the SIGTERM and in
the storm (SIGTERM → every client back); how busy the machine, each process and each client
event loop were; events lost, duplicated and reordered (all must be 0). One run per `--limits`
value, in one invocation; printed side by side, written to `--out` (results/storm-proxy.json),
the logs of every process under results/storm-proxy-logs/. Bounded by `--deadline` (all runs
together); every child process is stopped at the end, killed on error or Ctrl-C, and dies
with the benchmark however it dies (nginx runs as one process, without a master, for that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import storm
from storm import ROOT, Publisher, Storm, cpu_s, fmt, free_port, log, pct, send, sliding_peak

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HUBS = ("A", "B")
SAMPLE = 0.5  # seconds between two scrapes of each hub's /metrics
CALM_SKIP = 0.5  # seconds after the publisher starts before the calm window opens
SETTLE = 3.0  # seconds between two runs, for the first one's sockets and load to go


def nginx_config(directory: Path, port: int, upstreams: list[int]) -> Path:
    """The shipped file with its ports and log directory changed (tests/test_deploy.py's
    `nginx_config`), in a minimal main config sized for thousands of sockets."""
    site = (DEPLOY / "nginx.conf").read_text()
    for old, new in (
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("127.0.0.1:8081", f"127.0.0.1:{upstreams[0]}"),
        ("127.0.0.1:8082", f"127.0.0.1:{upstreams[1]}"),
        ("/var/log/nginx/", f"{directory}/"),
    ):
        if old not in site:
            raise RuntimeError(f"deploy/nginx.conf no longer contains {old!r}")
        site = site.replace(old, new)
    (directory / "hub.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(
        # One process (no master): it dies with the benchmark, through PR_SET_PDEATHSIG.
        "master_process off;\n"
        f"worker_rlimit_nofile {storm.NOFILE};\n"
        f"pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log;\n"
        "events { worker_connections 16384; }\n"  # two per socket: client and upstream
        f"http {{ client_body_temp_path {directory}/body; include {directory}/hub.conf; }}\n"
    )
    return main


def cpu_jiffies() -> tuple[int, int]:
    """The machine's CPU time, busy and in all (every core), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields) - fields[3] - fields[4], sum(fields)  # less idle and iowait


def busy_share(ticks: list[dict[str, Any]], start: float, end: float) -> float | None:
    """How busy the machine's cores were between two moments (1.0: all of them, all along)."""
    inside = [tick["cpu"] for tick in enclosing(ticks, start, end)]
    if len(inside) < 2 or inside[-1][1] == inside[0][1]:
        return None
    return round((inside[-1][0] - inside[0][0]) / (inside[-1][1] - inside[0][1]), 3)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


class ProxyRun(Storm):
    """One run: redis, hubs A and B, nginx, the clients; A restarted."""

    def __init__(self, args: argparse.Namespace, limit: int, logs: Path, until: float) -> None:
        super().__init__(args)
        self.limit = limit
        self.logs = logs
        self.deadline_at = until
        self.ports = {name: free_port() for name in HUBS}
        self.hubs: dict[str, asyncio.subprocess.Process] = {}
        self.instance = dict.fromkeys(HUBS, 1)  # which start of each hub
        self.nginx: asyncio.subprocess.Process | None = None
        self.ticks: list[dict[str, Any]] = []  # per scrape tick: {"t", "A": {...}, "B": {...}}
        self.scrapes_missed = Counter[str]()
        self.probe_publisher: Publisher | None = None
        self.drain_cpu = math.nan  # CPU seconds hub A used from its SIGTERM to its exit
        self.restarting = False  # hub A is meant to be down
        self.died: dict[str, int] = {}  # processes that exited when they should not have

    def expected(self) -> dict[str, int]:
        probes = self.probe_publisher.seq if self.probe_publisher else {}
        return {**super().expected(), **probes}

    def worker_options(self) -> list[str]:
        return [
            "--probes",
            str(self.args.probes),
            "--direct",
            str(self.args.direct),
            "--direct-port",
            str(self.ports["B"]),
            "--latency",
        ]

    # --- processes ---

    async def start_named_hub(self, name: str) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "HUB_AUTH": "off",
            "HUB_HOST": "127.0.0.1",
            "HUB_PORT": str(self.ports[name]),
            "HUB_LOG_LEVEL": "warning",
            "HUB_MAX_ACCEPT_RATE": str(self.limit),
            "HUB_MAX_SOCKETS_PER_ACCOUNT": "0",
        }
        env.pop("HUB_SECRET", None)
        with (self.logs / f"hub-{name}{self.instance[name]}.log").open("wb") as output:
            hub = await self.children.spawn(
                sys.executable,
                "-m",
                "hub",
                "serve",
                env=env,
                cwd=str(ROOT),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.hubs[name] = hub
        return hub

    async def wait_hub_ready(self, name: str, within: float) -> bool:
        """Poll /readyz every 10 ms: marks listening_<hub><n> and ready_<hub><n>."""
        hub, tag = self.hubs[name], f"{name}{self.instance[name]}"
        url = f"http://127.0.0.1:{self.ports[name]}/readyz"
        end, listening = time.time() + within, False
        while time.time() < end:
            if hub.returncode is not None:
                self.problems.append(f"hub {tag} exited with {hub.returncode} while starting")
                return False
            status = await asyncio.to_thread(self._status, url)
            if status and not listening:
                listening = True
                self.mark(f"listening_{tag}")
            if status == 200:
                self.mark(f"ready_{tag}")
                return True
            await asyncio.sleep(0.01)
        self.problems.append(f"hub {tag} was not ready within {within:.0f} s")
        return False

    async def start_nginx(self) -> None:
        directory = self.logs / "nginx"
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = nginx_config(directory, self.port, [self.ports[name] for name in HUBS])
        command = [NGINX, "-p", str(directory), "-c", str(config)]
        checked = await asyncio.to_thread(
            subprocess.run, [*command, "-t"], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t: {checked.stderr.strip()}")
        self.nginx = await self.children.spawn(
            *command, "-g", "daemon off;", stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{self.port}/healthz"
        end = time.time() + 10
        while await asyncio.to_thread(self._status, url) != 200:
            if self.nginx.returncode is not None or time.time() > end:
                raise RuntimeError("nginx did not answer /healthz (see its error.log)")
            await asyncio.sleep(0.05)

    # --- /metrics of each hub, on its own port ---

    async def sample_metrics(self) -> None:
        import aiohttp

        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            started = time.monotonic()
            try:
                for k in itertools.count():
                    self.check_alive()
                    tick: dict[str, Any] = {
                        "t": time.time(),
                        "cpu": cpu_jiffies(),
                        "processes": self.process_cpu(),
                    }
                    self.ticks.append(tick)
                    for name in HUBS:  # each on its own: a slow answer delays no tick
                        task = asyncio.create_task(self.scrape(http, name, tick))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    await asyncio.sleep(max(0.0, started + (k + 1) * SAMPLE - time.monotonic()))
            finally:
                for task in pending:
                    task.cancel()

    async def scrape(self, http: Any, name: str, tick: dict[str, Any]) -> None:
        n, asked = self.instance[name], time.time()
        try:
            async with http.get(f"http://127.0.0.1:{self.ports[name]}/metrics") as response:
                text = await response.text()
        except Exception:
            self.scrapes_missed[name] += 1  # down, draining, or too slow to answer
            return
        if n != self.instance[name]:
            return
        values = parse_metrics(text)
        tick[name] = {
            "t": time.time(),
            "answer_s": time.time() - asked,  # the hub's event loop, busy or not
            "n": n,
            "opened": values.get('hub_sockets_opened_total{via="ws"}', 0.0),
            "open": values.get('hub_sockets_open{via="ws"}', 0.0),
            "too_busy": values.get('hub_handshakes_refused_total{reason="too_busy"}', 0.0),
        }

    def check_alive(self) -> None:
        """Note hubs, nginx or Redis gone when they should not be (killed by someone?)."""
        watched = {f"hub {name}{self.instance[name]}": hub for name, hub in self.hubs.items()}
        watched["redis"] = self.children.processes[0]
        if self.nginx is not None:
            watched["nginx"] = self.nginx
        for name, process in watched.items():
            expected = name.startswith("hub A") and self.restarting
            if process.returncode is not None and not expected and name not in self.died:
                self.died[name] = process.returncode
                self.problems.append(f"{name} exited with {process.returncode} during the run")
                log(self.problems[-1])

    def process_cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process of the run (hubs by start: A1, A2, B1)."""
        pids = {f"{name}{self.instance[name]}": hub.pid for name, hub in self.hubs.items()}
        if self.nginx is not None:
            pids["nginx"] = self.nginx.pid
        if self.children.processes:
            pids["redis"] = self.children.processes[0].pid
        pids |= {f"worker{i}": worker.pid for i, worker in enumerate(self.workers)}
        used = {name: cpu_s(pid) for name, pid in pids.items()}
        used["benchmark"] = time.process_time()
        return {name: value for name, value in used.items() if not math.isnan(value)}

    # --- the run ---

    async def run(self) -> dict[str, Any]:
        args = self.args
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        await self.start_redis()
        for name in HUBS:
            await self.start_named_hub(name)
        for name in HUBS:
            if not await self.wait_hub_ready(name, self.budget(30)):
                raise RuntimeError("a hub did not start: " + "; ".join(self.problems))
        await self.start_nginx()
        log(
            f"HUB_MAX_ACCEPT_RATE={self.limit}: hubs A :{self.ports['A']}, B :{self.ports['B']}"
            f" behind nginx :{self.port}; opening {args.clients} clients"
            f" (and {args.direct} probes straight to B)"
        )
        sampler = asyncio.create_task(self.sample_metrics())
        try:
            self.mark("clients_start")
            await self.start_workers(args.procs + (1 if args.probes + args.direct else 0))
            if (
                await self.wait_until(
                    lambda: self.open_total >= args.clients + args.direct or bool(self.died),
                    self.budget(60 + args.ramp),
                    f"{args.clients + args.direct} clients to open",
                )
                and not self.died
            ):
                self.mark("all_open")
                await self.storm()
            return await self.collect()
        finally:
            sampler.cancel()

    async def storm(self) -> None:
        args = self.args
        log(f"all open in {self.marks['all_open'] - self.marks['clients_start']:.2f} s")
        self.publisher = Publisher(self.redis_url, args.accounts, args.rate)
        publishing = [asyncio.create_task(self.publisher.run())]
        if args.probes + args.direct:
            self.probe_publisher = Publisher(
                self.redis_url, args.probes + args.direct, args.probe_rate, storm.PROBE_PREFIX
            )
            publishing.append(asyncio.create_task(self.probe_publisher.run()))
        self.mark("publish_start")
        await asyncio.sleep(self.budget(args.before))
        restart = asyncio.create_task(self.restart_a())
        await self.wait_until(
            lambda: self.open_total < args.clients + args.direct or restart.done(),
            self.budget(15),
            "a client to see hub A's drain",
        )
        if (
            await self.wait_until(
                lambda: self.open_total >= args.clients + args.direct or bool(self.died),
                self.budget(math.inf) - args.after,
                "every client to come back",
            )
            and not self.died
        ):
            self.mark("all_back")
            log(f"all back {self.marks['all_back'] - self.marks['sigterm']:.2f} s after SIGTERM")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(restart), max(1.0, self.budget(60)))
        if not restart.done():
            self.problems.append("hub A did not come back in time")
        await asyncio.sleep(self.budget(args.after))
        for publisher in (self.publisher, self.probe_publisher):
            if publisher is not None:
                publisher.stop.set()
        await asyncio.gather(*publishing)
        self.mark("publish_stop")

    async def restart_a(self) -> None:
        hub = self.hubs["A"]
        log("SIGTERM to hub A")
        used, reaped = cpu_s(hub.pid), children_cpu()
        self.restarting = True
        self.mark("sigterm")
        send(hub, signal.SIGTERM)
        try:
            await asyncio.wait_for(hub.wait(), max(1.0, self.budget(60)))
        except TimeoutError:
            self.problems.append("hub A did not exit after SIGTERM; killed")
            send(hub, signal.SIGKILL)
            await hub.wait()
        self.mark("exited")
        self.drain_cpu = children_cpu() - reaped - used  # its whole life's, less before
        if hub.returncode != 0:
            self.problems.append(f"hub A exited with {hub.returncode} after SIGTERM")
        log(
            f"hub A exited ({hub.returncode}) "
            f"{self.marks['exited'] - self.marks['sigterm']:.2f} s after SIGTERM"
        )
        await asyncio.sleep(self.args.downtime)
        self.instance["A"] = 2
        self.mark("start_A2")
        await self.start_named_hub("A")
        self.restarting = False
        if await self.wait_hub_ready("A", self.budget(30)):
            log(f"hub A ready again, {self.marks['ready_A2'] - self.marks['sigterm']:.2f} s on")

    # --- what it says ---

    def analyse(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        args, marks = self.args, self.marks
        clients = []
        for report in reports:
            for client in report["clients"]:
                client["probe"] = report.get("worker") == args.procs
                clients.append(client)
        t_term = marks.get("sigterm", math.inf)
        moves = Moves(t_term)
        for client in clients:
            moves.add(client)
        all_back_at = t_term + max(moves.back) if moves.back and not moves.not_back else math.nan
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
        ready_a = marks.get("ready_A2", math.nan)
        hubs = self.hub_metrics(t_term, marks.get("publish_stop", math.inf))
        storm_end = all_back_at if not math.isnan(all_back_at) else marks.get("publish_stop")
        calm_start = marks.get("publish_start", math.nan) + CALM_SKIP
        latency = self.latency(moves.stayed, calm_start, storm_end)
        lag = worker_lag(reports, calm_start, t_term, storm_end, args.procs)
        problems = list(self.problems)
        if len(clients) != args.clients + args.direct:
            problems.append(
                f"reports cover {len(clients)} of {args.clients} + {args.direct} clients"
            )
        if moves.not_back:
            problems.append(f"{moves.not_back} clients never reopened after the restart")
        refused = Counter(c["refused"] for c in clients if c["refused"])
        if refused:
            problems.append(f"{sum(refused.values())} clients ended: {refused.most_common(3)}")
        for key in ("lost", "duplicated", "reordered", "unexpected", "ids_backwards", "foreign"):
            if totals[key]:
                problems.append(f"{totals[key]} events {key.replace('_', ' ')}")
        if totals["resets"]:
            problems.append(f"{totals['resets']} welcomes said recovered: false")
        if moves.final:
            problems.append(f"clients not open at the end: {dict(moves.final)}")
        if "sigterm" not in marks:
            problems.append("hub A was never restarted")
        elif not moves.stayed:
            problems.append("no client stayed connected through the restart (none on B?)")
        on_b = hubs["open_before_sigterm"].get("B") if "sigterm" in marks else None
        if on_b is not None and abs(len(moves.stayed) - on_b) > max(5, on_b // 50):
            problems.append(
                f"{len(moves.stayed)} clients stayed connected, but B held {on_b:.0f} sockets"
            )
        opens = sorted(moves.opens)
        published = self.publisher.count if self.publisher else 0
        probe_published = self.probe_publisher.count if self.probe_publisher else 0
        return {
            "limit": self.limit,
            "timeline_s": {k: round(v - self.started, 3) for k, v in marks.items()},
            "initial_open_s": rel(marks, "clients_start", "all_open"),
            "drain_s": rel(marks, "sigterm", "exited"),
            "a_down_s": rel(marks, "sigterm", "ready_A2"),
            "all_back_after_sigterm_s": nan_none(all_back_at - t_term),
            "all_back_after_a_ready_s": nan_none(all_back_at - ready_a),
            "moved_clients": len(moves.back) + moves.not_back,
            "stayed_clients": len(moves.stayed),
            "back_after_sigterm_s": spread(moves.back),
            "back_after_a_ready_s": spread(
                [] if math.isnan(ready_a) else [t_term + b - ready_a for b in moves.back]
            ),
            "down_per_client_s": spread(moves.down),
            "close_codes_at_restart": dict(moves.codes),
            "failed_attempts_after_sigterm": dict(moves.failures.most_common(8)),
            "connect_attempts_after_sigterm": sum(moves.attempts),
            "clients_peak_accepts_per_s": sliding_peak(opens, 1.0),
            "hubs": hubs,
            "latency_b_s": latency,
            "worker_loop_lag_s": lag,
            "cpu_s": {
                "calm_per_s": cpu_used(self.ticks, calm_start, t_term - SAMPLE, per_second=True),
                "storm": {
                    **cpu_used(self.ticks, t_term, storm_end or math.inf),
                    **({} if math.isnan(self.drain_cpu) else {"A1": round(self.drain_cpu, 2)}),
                },
            },
            "machine_busy": {
                "calm": busy_share(self.ticks, calm_start, t_term - SAMPLE),
                "storm": busy_share(self.ticks, t_term, storm_end or math.inf),
                "per_0.5s_from_sigterm": [
                    (round(b["t"] - t_term, 2), busy_share([a, b], a["t"], b["t"]))
                    for a, b in itertools.pairwise(self.ticks)
                    if b["t"] >= t_term - 1
                ][:120],
            },
            "metrics_answer_s": {
                name: {
                    "calm_max": max(
                        (
                            t[name]["answer_s"]
                            for t in self.ticks
                            if name in t and calm_start <= t["t"] < t_term
                        ),
                        default=None,
                    ),
                    "storm_max": max(
                        (
                            t[name]["answer_s"]
                            for t in self.ticks
                            if name in t and t_term <= t["t"] <= (storm_end or math.inf)
                        ),
                        default=None,
                    ),
                }
                for name in HUBS
            },
            "nginx_error_log": nginx_errors(self.logs / "nginx" / "error.log"),
            "events": {
                "published": published,
                "published_during_storm": self.published_at.get("all_back", published)
                - self.published_at.get("sigterm", 0),
                "published_to_probes": probe_published,
                "publisher_max_lag_s": max(
                    (p.lag for p in (self.publisher, self.probe_publisher) if p), default=None
                ),
                "delivered": totals["received"],
                "expected_deliveries": totals["expected"],
                **{k: v for k, v in totals.items() if k not in ("received", "expected")},
            },
            "workers": [{"rss_mb": r["rss_mb"], "cpu_s": r["cpu_s"]} for r in reports],
            "anomalies": [
                {k: c[k] for k in c if k not in ("states", "latency")}
                for c in clients
                if c["lost"] or c["duplicated"] or c["reordered"] or c["refused"] or c["resets"]
            ][:50],
            "problems": problems,
            "verdict": "PASS" if not problems else "FAIL",
        }

    def hub_metrics(self, t_term: float, t_stop: float) -> dict[str, Any]:
        """Per hub, from its own /metrics: accepts/s over the storm, its sockets before and
        after, its too_busy refusals. Counters restart with the hub: summed over its starts."""
        series: dict[str, list[tuple[float, float, float, float]]] = {}
        for name in HUBS:
            points, offset, last, instance = [], 0.0, 0.0, 1
            for tick in self.ticks:
                sample = tick.get(name)
                if sample is not None:
                    if sample["n"] != instance:
                        offset, last, instance = offset + last, 0.0, sample["n"]
                    last = sample["opened"]
                    points.append((sample["t"], offset + last, sample["open"], sample["too_busy"]))
            series[name] = sorted(points)
        # Both hubs together: at each sample of either, the sum of the latest of each.
        latest, total = dict.fromkeys(HUBS, 0.0), []
        for t, name, opened in sorted((p[0], n, p[1]) for n, ps in series.items() for p in ps):
            latest[name] = opened
            total.append((t, sum(latest.values()), 0.0, 0.0))

        def open_at(when: float) -> dict[str, float | None]:
            return {
                name: next((p[2] for p in reversed(points) if p[0] < when), None)
                for name, points in series.items()
            }

        return {
            "open_before_sigterm": open_at(t_term),
            "open_at_end": open_at(t_stop),  # before the clients close
            "peak_accepts_per_s_1s": {
                **{name: window_peak(points, t_term, 1.0) for name, points in series.items()},
                "total": window_peak(total, t_term, 1.0),
            },
            "peak_accepts_per_s_0.5s": {
                name: window_peak(points, t_term, SAMPLE) for name, points in series.items()
            },
            "too_busy_refusals_after_sigterm": {
                name: too_busy_since(points, t_term) for name, points in series.items()
            },
            "scrapes_missed": dict(self.scrapes_missed),
            "accepts_per_s_from_sigterm": {
                name: [
                    (round(b[0] - t_term, 2), round((b[1] - a[1]) / (b[0] - a[0]), 1))
                    for a, b in itertools.pairwise(points)
                    if b[0] >= t_term - 1 and b[0] > a[0]
                ][:120]
                for name, points in series.items()
            },
        }

    def latency(
        self, stayed: list[dict[str, Any]], calm_start: float, storm_end: float | None
    ) -> dict[str, Any]:
        """Publish → receive, of B's own sockets (the clients that never left): calm (before
        A's SIGTERM) against the storm (SIGTERM → every client back); the clients of the main
        workers, and the probes (a process of their own, each on an account of its own)."""
        t_term = self.marks.get("sigterm", math.inf)
        end = math.inf if storm_end is None or math.isnan(storm_end) else storm_end
        result: dict[str, Any] = {}
        for group, members in (
            ("b_clients", [c for c in stayed if not c["probe"]]),
            ("b_probes", [c for c in stayed if c["probe"] and not c["direct"]]),
            ("b_direct", [c for c in stayed if c["direct"]]),
        ):
            calm, during, buckets = [], [], Counter[int]()
            stored_calm, stored_storm = [], []  # publish → stored: the publisher and Redis
            timeline: dict[int, list[float]] = {}
            for client in members:
                for sent, delay, stored in client.get("latency", ()):
                    if calm_start <= sent < t_term:
                        calm.append(delay)
                        stored_calm.append(stored)
                    elif t_term <= sent <= end:
                        during.append(delay)
                        stored_storm.append(stored)
                    if sent >= t_term - 3:
                        timeline.setdefault(math.floor((sent - t_term) / SAMPLE), []).append(delay)
            for k, delays in timeline.items():
                buckets[k] = len(delays)
            result[group] = {
                "clients": len(members),
                "calm": spread(calm, (50, 99, 99.9)),
                "storm": spread(during, (50, 99, 99.9)),
                # of which publish → stored (the ID's millisecond: ±1 ms), for the same events
                "stored_calm": spread(stored_calm, (50, 99)),
                "stored_storm": spread(stored_storm, (50, 99)),
                "p99_per_0.5s_from_sigterm": [
                    (k * SAMPLE, round(pct(timeline[k], 99) or 0.0, 4), buckets[k])
                    for k in sorted(timeline)
                ][:120],
            }
        return result


class Moves:
    """What the clients' state changes say: who left at the restart, when each came back."""

    def __init__(self, t_term: float) -> None:
        self.t_term = t_term
        self.back: list[float] = []  # first open after leaving - SIGTERM
        self.down: list[float] = []  # first open after leaving - leaving
        self.opens: list[float] = []  # every open after SIGTERM
        self.attempts: list[int] = []
        self.codes = Counter[str]()  # the close each moved client saw
        self.failures = Counter[str]()  # failed attempts after SIGTERM, by code and reason
        self.final = Counter[str]()  # clients not open at the end
        self.stayed: list[dict[str, Any]] = []
        self.not_back = 0

    def add(self, client: dict[str, Any]) -> None:
        states = client["states"]
        after = [(t, s, c) for t, s, c, _ in states if t >= self.t_term]
        self.opens += [t for t, s, _ in after if s == "open"]
        self.attempts.append(sum(1 for _, s, _ in after if s == "connecting"))
        for (_, before, _, _), (t, state, code, why) in itertools.pairwise(states):
            if state == "waiting" and before == "connecting" and t >= self.t_term:
                self.failures[f"{code} {why[:70]}"] += 1
        if client["state"] != "open":
            self.final[f"final state {client['state']}"] += 1
        left = next((t for t, s, _ in after if s != "open"), None)
        if left is None:
            self.stayed.append(client)
            return
        self.codes[str(next((c for _, s, c in after if s == "waiting"), None))] += 1
        back = next((t for t, s, _ in after if s == "open" and t >= left), None)
        if back is None:
            self.not_back += 1
            return
        self.back.append(back - self.t_term)
        self.down.append(back - left)


def rel(marks: dict[str, float], start: str, end: str) -> float | None:
    return round(marks[end] - marks[start], 3) if start in marks and end in marks else None


def nan_none(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def spread(values: list[float], points: tuple[float, ...] = (50, 99)) -> dict[str, Any]:
    summary: dict[str, Any] = {f"p{p:g}": pct(values, p) for p in points}
    summary["max"] = max(values) if values else None
    summary["n"] = len(values)
    return summary


def window_peak(points: list[tuple[float, float, float, float]], since: float, width: float) -> Any:
    """The most accepts per second over any `width` seconds after `since` (the storm): the
    counter's rise from the latest sample at least `width` earlier."""
    best, j = None, 0
    for t, opened, _, _ in points:
        while j + 1 < len(points) and points[j + 1][0] <= t - width:
            j += 1
        t0, opened0 = points[j][0], points[j][1]
        if t >= since and t - t0 >= width:
            rate = (opened - opened0) / (t - t0)
            best = rate if best is None else max(best, rate)
    return None if best is None else round(best, 1)


def too_busy_since(points: list[tuple[float, float, float, float]], since: float) -> int:
    """too_busy refusals after `since`, summed over the hub's starts (its counter restarts)."""
    total, previous = 0.0, None
    for t, _, _, busy in points:
        if previous is not None and t >= since:
            total += busy - previous if busy >= previous else busy
        previous = busy
    return int(total)


def worker_lag(
    reports: list[dict[str, Any]], calm: float, t_term: float, end: float | None, probe: int
) -> dict[str, Any]:
    """How late the client processes' event loops ran (the most, per 0.5 s), calm and in the
    storm: the clients' own share of the latency they measure."""
    stop = math.inf if end is None or math.isnan(end) else end
    lags: dict[str, list[float]] = {}
    for report in reports:
        who = "probe_worker" if report.get("worker") == probe else "workers"
        for t, late in report.get("loop_lag", ()):
            if calm <= t < t_term:
                lags.setdefault(f"{who}_calm_max", []).append(late)
            elif t_term <= t <= stop:
                lags.setdefault(f"{who}_storm_max", []).append(late)
    return {
        f"{who}_{window}_max": max(lags.get(f"{who}_{window}_max", ()), default=None)
        for who in ("workers", "probe_worker")
        for window in ("calm", "storm")
    }


def children_cpu() -> float:
    """CPU seconds of this process's children that exited and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def enclosing(ticks: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The ticks from the last one at or before `start` to the first one at or after `end`."""
    first = max((i for i, tick in enumerate(ticks) if tick["t"] <= start), default=0)
    last = min((i for i, tick in enumerate(ticks) if tick["t"] >= end), default=len(ticks) - 1)
    return ticks[first : last + 1]


def cpu_used(
    ticks: list[dict[str, Any]], start: float, end: float, per_second: bool = False
) -> dict[str, float]:
    """CPU seconds each process used between two moments, from the scrape ticks around them:
    a process started in between counts from 0, one that exited until its last tick; the
    client workers summed as `clients`."""
    window = enclosing(ticks, start, end)
    if len(window) < 2:
        return {}
    before, last = window[0]["processes"], {}
    for tick in window:
        last.update(tick["processes"])
    result: dict[str, float] = {}
    for name, used in last.items():
        key = "clients" if name.startswith("worker") else name
        result[key] = result.get(key, 0.0) + used - before.get(name, 0.0)
    span = window[-1]["t"] - window[0]["t"] if per_second else 1.0
    return {k: round(v / span, 3 if per_second else 2) for k, v in result.items()}


def nginx_errors(path: Path) -> dict[str, int]:
    """nginx's error log, by kind of message: upstream connects refused while A was down
    (each retried on the next upstream), and anything else."""
    kinds: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            message = re.sub(r"^\S+ \S+ \[(\w+)\] \d+#\d+: (\*\d+ )?", r"[\1] ", line)
            kinds[re.sub(r",? (client|upstream|server|request|host): .*", "", message)[:100]] += 1
    return dict(kinds.most_common(10))


# --- both runs, side by side ---------------------------------------------------------------


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.1f} ms"


def pc(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    if "hubs" not in run:
        return [("limit", str(run.get("limit"))), ("verdict", run.get("verdict", "FAIL"))]
    hubs, lat, events = run["hubs"], run["latency_b_s"], run["events"]
    peak = hubs["peak_accepts_per_s_1s"]
    busy = hubs["too_busy_refusals_after_sigterm"]
    before, end = hubs["open_before_sigterm"], hubs["open_at_end"]
    b, probes, lag = lat["b_clients"], lat["b_probes"], run["worker_loop_lag_s"]
    direct = lat["b_direct"]
    back, back_ready = run["back_after_sigterm_s"], run["back_after_a_ready_s"]
    down = run["down_per_client_s"]
    cpu: dict[str, float] = {}  # A1 and A2 as A
    for name, used in run["cpu_s"]["storm"].items():
        key = name.rstrip("0123456789")
        cpu[key] = cpu.get(key, 0.0) + used
    return [
        ("HUB_MAX_ACCEPT_RATE (each hub)", str(run["limit"]) if run["limit"] else "0 (none)"),
        ("sockets on A / B before", f"{num(before.get('A'))} / {num(before.get('B'))}"),
        ("A: drain / SIGTERM → ready again", f"{fmt(run['drain_s'])} / {fmt(run['a_down_s'])}"),
        ("all back after SIGTERM", fmt(run["all_back_after_sigterm_s"])),
        ("all back after A ready", fmt(run["all_back_after_a_ready_s"])),
        ("moved clients back p50 / p99", f"{fmt(back['p50'])} / {fmt(back['p99'])}"),
        ("  (from A ready) p50 / p99", f"{fmt(back_ready['p50'])} / {fmt(back_ready['p99'])}"),
        ("  (each: 1001 → open) p50 / p99", f"{fmt(down['p50'])} / {fmt(down['p99'])}"),
        ("peak accepts/s, clients (1 s)", f"{run['clients_peak_accepts_per_s']:,}"),
        (
            "peak accepts/s, metrics A / B / sum",
            f"{num(peak.get('A'))} / {num(peak.get('B'))} / {num(peak.get('total'))}",
        ),
        ("too_busy refusals A / B", f"{busy.get('A', 0):,} / {busy.get('B', 0):,}"),
        ("connect attempts after SIGTERM", f"{run['connect_attempts_after_sigterm']:,}"),
        (
            "B sockets that stayed: clients, probes",
            f"{b['clients']:,}, {probes['clients']} (+{direct['clients']} direct)",
        ),
        ("B p99 calm → storm, clients", f"{ms(b['calm']['p99'])} → {ms(b['storm']['p99'])}"),
        ("B max calm → storm, clients", f"{ms(b['calm']['max'])} → {ms(b['storm']['max'])}"),
        (
            "  client loop lag max calm → storm",
            f"{ms(lag['workers_calm_max'])} → {ms(lag['workers_storm_max'])}",
        ),
        (
            "B p99 calm → storm, probes",
            f"{ms(probes['calm']['p99'])} → {ms(probes['storm']['p99'])}",
        ),
        (
            "B max calm → storm, probes",
            f"{ms(probes['calm']['max'])} → {ms(probes['storm']['max'])}",
        ),
        (
            "B p99 calm → storm, direct probes",
            f"{ms(direct['calm']['p99'])} → {ms(direct['storm']['p99'])}",
        ),
        (
            "  of which publish → stored, p99",
            f"{ms(probes['stored_calm']['p99'])} → {ms(probes['stored_storm']['p99'])}",
        ),
        (
            "  probe loop lag max calm → storm",
            f"{ms(lag['probe_worker_calm_max'])} → {ms(lag['probe_worker_storm_max'])}",
        ),
        (
            "  samples calm / storm: clients; probes; direct",
            f"{b['calm']['n']:,} / {b['storm']['n']:,}; {probes['calm']['n']:,} / "
            f"{probes['storm']['n']:,}; {direct['calm']['n']:,} / {direct['storm']['n']:,}",
        ),
        (
            "CPU s in the storm: A / B / nginx / clients",
            " / ".join(f"{cpu.get(name, 0.0):.1f}" for name in ("A", "B", "nginx", "clients")),
        ),
        (
            f"machine CPU busy calm → storm ({os.cpu_count()} cores)",
            f"{pc(run['machine_busy']['calm'])} → {pc(run['machine_busy']['storm'])}",
        ),
        (
            "B's /metrics answer max calm → storm",
            f"{ms(run['metrics_answer_s']['B']['calm_max'])} → "
            f"{ms(run['metrics_answer_s']['B']['storm_max'])}",
        ),
        ("sockets on A / B at the end", f"{num(end.get('A'))} / {num(end.get('B'))}"),
        (
            "events published (in the storm); probes",
            f"{events['published']:,} ({events['published_during_storm']:,}); "
            f"{events['published_to_probes']:,}",
        ),
        ("delivered / expected", f"{events['delivered']:,} / {events['expected_deliveries']:,}"),
        (
            "lost / duplicated / reordered",
            f"{events['lost']} / {events['duplicated']} / {events['reordered']}",
        ),
        ("verdict", run["verdict"]),
    ]


def side_by_side(result: dict[str, Any]) -> str:
    runs = [rows(run) for run in result["runs"]]
    labels = [label for label, _ in max(runs, key=len)]
    values = [dict(run) for run in runs]
    width = max(len(label) for label in labels)
    columns = [max(len(v) for v in run.values()) for run in values]
    lines = []
    for label in labels:
        cells = [f"{run.get(label, ''):<{w}}" for run, w in zip(values, columns, strict=True)]
        lines.append(f"  {label:<{width}}  " + "  │  ".join(cells).rstrip())
    for run in result["runs"]:
        lines += [f"  ! [limit {run.get('limit')}] {p}" for p in run.get("problems", [])]
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace, result: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    out = Path(args.out)
    end = time.time() + args.deadline
    for index, limit in enumerate(args.limits):
        if index:
            await asyncio.sleep(SETTLE)
        until = time.time() + (end - time.time()) / (len(args.limits) - index)
        run = ProxyRun(args, limit, out.parent / f"{out.stem}-logs" / f"limit-{limit}", until)
        try:
            async with asyncio.timeout(until - time.time()):
                outcome = await run.run()
        except TimeoutError:
            run.problems.append(f"this run's share of the deadline ({until - run.started:.0f} s)")
            outcome = {"limit": limit, "verdict": "FAIL", "problems": run.problems}
        except Exception as error:
            run.problems.append(f"{type(error).__name__}: {error}")
            outcome = {"limit": limit, "verdict": "FAIL", "problems": run.problems}
        finally:
            try:
                await asyncio.wait_for(run.children.stop_all(), 30)
            except BaseException:
                run.children.kill_all()
                raise
        result["runs"].append(outcome)
        print(f"[limit {limit}] {outcome['verdict']}", file=sys.stderr, flush=True)


def run_proxy(args: argparse.Namespace) -> int:
    nofile = storm.raise_nofile()
    if nofile < 2 * args.clients + 200:  # nginx: a client side and an upstream side each
        log(f"warning: RLIMIT_NOFILE is {nofile}: nginx needs two per client ({args.clients})")
    result: dict[str, Any] = {
        "config": {
            "clients": args.clients,
            "accounts": args.accounts,
            "procs": args.procs,
            "probes": args.probes,
            "direct_probes": args.direct,
            "probe_rate": args.probe_rate,
            "limits": args.limits,
            "downtime_s": args.downtime,
            "rate": args.rate,
            "before_s": args.before,
            "after_s": args.after,
            "ramp_s": args.ramp,
            "deadline_s": args.deadline,
            "cpus": os.cpu_count(),
            "nofile": nofile,
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "nginx": subprocess.run(
                [NGINX, "-v"], capture_output=True, text=True, check=False
            ).stderr.strip(),
            "hub_source": storm.source_state(),
        },
        "runs": [],
    }
    began = time.monotonic()
    code = 0
    try:
        asyncio.run(orchestrate(args, result))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; every child was stopped")
        code = 130
    result["config"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["run_s"] = round(time.monotonic() - began, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if result["runs"]:
        print(side_by_side(result))
    print(f"  wrote {out} in {result['run_s']:.1f} s")
    if code:
        return code
    complete = len(result["runs"]) == len(args.limits)
    return 0 if complete and all(r["verdict"] == "PASS" for r in result["runs"]) else 1
