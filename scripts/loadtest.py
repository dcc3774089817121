#!/usr/bin/env python3
"""Load-test a hub: N WebSocket clients over A accounts, R events/s, measured end to end.

    .venv/bin/python scripts/loadtest.py --sockets 1000 --accounts 100 --rate 200 --duration 20

Targets 127.0.0.1:8080 unless --url names another hub. Tokens are minted with HUB_SECRET (from
the environment or .env); pass --no-auth for a hub with HUB_AUTH=off. Every run is bounded in
sockets and time and stops by itself. Results: a summary table, OUT/loadtest.json and
OUT/loadtest.html (latency CDF, throughput over time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadlib import clients, report
from loadlib.probes import (
    ProcessSample,
    RedisProbe,
    command_delta,
    hub_root,
    pid_listening_on,
    sample_process,
)
from loadlib.publisher import Published, Publisher

MAX_SOCKETS = 50_000
MAX_SECONDS = 3_600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the hub (default: %(default)s)"
    )
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument(
        "--procs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="client processes"
    )
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument(
        "--ramp", type=float, default=2.0, help="seconds over which connects are spread (jittered)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="events published per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--events", type=int, help="publish this many events instead of --duration")
    parser.add_argument("--payload-size", type=int, default=64, help="padding bytes per event")
    parser.add_argument(
        "--publish-via",
        choices=["http", "redis", "firehose"],
        default="http",
        help="the hub's HTTP API, its publish script in Redis, or (scripts/bench/floor.py "
        "only) one socket at /publish",
    )
    parser.add_argument(
        "--redis-url", help="the hub's Redis: commandstats, and --publish-via redis"
    )
    parser.add_argument(
        "--hub-pid", type=int, help="hub process for CPU and RSS (default: found by port)"
    )
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds of idle measurement before publishing"
    )
    parser.add_argument("--batch", action="store_true", help="ask for batched frames (?batch=1)")
    parser.add_argument(
        "--transport",
        choices=["ws", "sse"],
        default="ws",
        help="WebSockets (/ws), or event streams as EventSource opens them (/sse)",
    )
    parser.add_argument("--no-auth", action="store_true", help="the hub runs with HUB_AUTH=off")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="directory for JSON and HTML"
    )
    parser.add_argument("--prefix", default="load", help="account ID prefix")
    parser.add_argument(
        "--spread-sources",
        action="store_true",
        help="each client process connects from its own loopback address (127.0.0.2, ...): "
        "one address pair has ~28,000 ephemeral ports",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.sockets <= MAX_SOCKETS:
        parser.error(f"--sockets must be 1..{MAX_SOCKETS}")
    if not 1 <= args.accounts <= args.sockets:
        parser.error("--accounts must be 1..sockets")
    if args.events is None and not 0 < args.duration <= MAX_SECONDS:
        parser.error(f"--duration must be in (0, {MAX_SECONDS}]")
    return args


def secret() -> str | None:
    if os.environ.get("HUB_SECRET"):
        return os.environ["HUB_SECRET"]
    from hub.config import read_dotenv

    return read_dotenv(Path(".env")).get("HUB_SECRET")


class Run:
    """One load test: workers, publisher and probes, phase by phase."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        parts = urlsplit(args.url)
        self.http_base = f"{parts.scheme}://{parts.netloc}"
        self.ws_base = self.http_base.replace("http", "ws", 1)
        self.accounts = [f"{args.prefix}{n}" for n in range(args.accounts)]
        listening = pid_listening_on(parts.port or 80)
        self.hub_pid = args.hub_pid or (hub_root(listening) if listening else None)
        self.redis = RedisProbe(args.redis_url) if args.redis_url else None
        self.tokens: dict[str, str] = {}
        self.admin: str | None = None
        if not args.no_auth:
            key = secret()
            if key is None:
                sys.exit("loadtest: HUB_SECRET is not set (environment or .env); or pass --no-auth")
            from hub.core.auth import mint

            now = time.time()
            self.tokens = {a: mint(key, a, now, MAX_SECONDS * 2) for a in self.accounts}
            self.admin = mint(key, "loadtest", now, MAX_SECONDS * 2, "*")
        self.results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}

    def phase(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def progress(self, counters: Any, label: str, value: int, goal: int) -> None:
        """A one-line progress bar on a terminal."""
        if not sys.stderr.isatty():
            return
        width = 30
        done = min(width, int(width * value / max(goal, 1)))
        sockets = int(self.counter(counters, clients.CONNECTED))
        bar = "#" * done + "." * (width - done)
        line = f"\r  [{bar}] {label} {value}/{goal}  sockets {sockets}/{self.args.sockets}   "
        print(line, end="", file=sys.stderr, flush=True)

    def counter(self, counters: Any, which: int) -> float:
        return sum(counters[i * clients.COUNTERS + which] for i in range(self.args.procs))

    def run(self) -> dict[str, Any]:
        args = self.args
        context = multiprocessing.get_context("spawn")
        counters = context.Array("d", args.procs * clients.COUNTERS, lock=False)
        stop, queue = context.Event(), context.Queue()
        m: dict[str, Any] = {"before": self.hub_sample()}
        workers = [
            context.Process(target=clients.worker_main, args=(plan, counters, stop, queue))
            for plan in self.plans()
        ]
        try:
            self.connect(workers, counters, m)
            m["idle"] = self.measure_idle()
            self.load(counters, m)
        finally:
            stop.set()
        results = [queue.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return self.summarize(results=results, **m)

    def plans(self) -> list[clients.Plan]:
        args = self.args
        query = "?last_id=$" + ("&batch=1" if args.batch else "")
        return [
            clients.Plan(
                index=index,
                base_url=self.http_base if args.transport == "sse" else self.ws_base,
                path="/sse/{account}" if args.transport == "sse" else "/ws/{account}",
                source=f"127.0.0.{2 + index}" if args.spread_sources else None,
                accounts=[
                    self.accounts[n % args.accounts] for n in range(index, args.sockets, args.procs)
                ],
                tokens=self.tokens,
                query=query,
                concurrency=max(1, args.connect_concurrency // args.procs),
                ramp=args.ramp,
                seed=index,
            )
            for index in range(args.procs)
        ]

    def hub_sample(self) -> ProcessSample | None:
        return sample_process(self.hub_pid) if self.hub_pid else None

    def connect(self, workers: list[Any], counters: Any, m: dict[str, Any]) -> None:
        args = self.args
        self.phase(
            f"connecting {args.sockets} sockets over {args.accounts} accounts "
            f"from {args.procs} process{'' if args.procs == 1 else 'es'}"
        )
        m["started"] = time.time()
        for worker in workers:
            worker.start()
        deadline = m["started"] + args.ramp + 60
        while time.time() < deadline:
            done = self.counter(counters, clients.CONNECTED)
            if done + self.counter(counters, clients.FAILED) >= args.sockets:
                break
            self.progress(counters, "connected", int(done), args.sockets)
            time.sleep(0.1)
        m["connected_at"] = time.time()
        m["connected"] = int(self.counter(counters, clients.CONNECTED))
        m["failed"] = int(self.counter(counters, clients.FAILED))
        m["after_connect"] = self.hub_sample()
        m["connect_workers_cpu"] = self.counter(counters, clients.CPU)
        self.phase(
            f"{m['connected']} connected, {m['failed']} failed, "
            f"in {m['connected_at'] - m['started']:.1f} s"
        )

    def measure_idle(self) -> dict[str, Any]:
        """What holding the sockets costs, with no events."""
        idle: dict[str, Any] = {}
        if self.args.idle <= 0:
            return idle
        redis_before, hub_before = self.redis_snapshot(), self.hub_sample()
        time.sleep(self.args.idle)
        redis_after, hub_after = self.redis_snapshot(), self.hub_sample()
        if redis_before and redis_after:
            calls = command_delta(redis_before[0], redis_after[0])
            idle["redis_commands"] = calls
            idle["redis_commands_per_s"] = sum(calls.values()) / self.args.idle
        if hub_before and hub_after:
            cpu = hub_after.cpu_seconds - hub_before.cpu_seconds
            idle["hub_cpu_percent"] = 100 * cpu / self.args.idle
        return idle

    def redis_snapshot(self) -> tuple[dict[str, int], float] | None:
        return self.redis.snapshot() if self.redis else None

    def load(self, counters: Any, m: dict[str, Any]) -> None:
        args = self.args
        count = args.events if args.events is not None else int(args.rate * args.duration)
        via = args.publish_via
        publisher = Publisher(
            http_base=self.http_base if via == "http" else None,
            token=self.admin,
            redis_url=args.redis_url if via == "redis" else None,
            firehose=self.ws_base + "/publish" if via == "firehose" else None,
            payload_size=args.payload_size,
        )
        m["redis_before"], m["hub_before"] = self.redis_snapshot(), self.hub_sample()
        workers_cpu, main_cpu = self.counter(counters, clients.CPU), time.process_time()
        self.phase(f"publishing {count} events at {args.rate:g}/s via {args.publish_via}")
        published = asyncio.run(self._publish(publisher, count, counters))
        listeners = dict.fromkeys(self.accounts, 0)
        for n in range(args.sockets):
            listeners[self.accounts[n % args.accounts]] += 1
        expected = sum(published.per_account[a] * k for a, k in listeners.items())
        drain_deadline = time.time() + 10
        while time.time() < drain_deadline:
            received = int(self.counter(counters, clients.RECEIVED))
            if received >= expected:
                break
            self.progress(counters, "received", received, expected)
            time.sleep(0.1)
        m["elapsed"] = time.time() - published.started
        m["main_cpu"] = time.process_time() - main_cpu
        m["workers_cpu"] = self.counter(counters, clients.CPU) - workers_cpu
        m["hub_after"], m["redis_after"] = self.hub_sample(), self.redis_snapshot()
        m["published"], m["expected"] = published, expected

    async def _publish(self, publisher: Publisher, count: int, counters: Any) -> Any:
        task = asyncio.create_task(publisher.run(self.accounts, self.args.rate, count))
        while not task.done():
            self.progress(counters, "published", publisher.result.count, count)
            await asyncio.sleep(0.2)
        return task.result()

    def summarize(self, **m: Any) -> dict[str, Any]:
        results, published = m["results"], m["published"]
        samples = [s for r in results for s in r["samples"]]
        summary: dict[str, Any] = {
            "sockets": self.args.sockets,
            **self._connecting(results, m),
            "published": published.count,
            "publish_failed": published.failed,
            "publisher_max_lag_s": published.max_lag,
            **self._delivery(results, published, m),
            "latency_ms": report.latency_summary(
                samples, max((r["latency_max"] for r in results), default=0)
            ),
            "idle": m["idle"],
        }
        summary.update(self._costs(summary["delivered"], m))
        summary["warnings"] = self._warnings(summary, published)
        summary["errors"] = sorted({e for r in results for e in r["errors"]})[:10]
        self.results["summary"] = summary
        start_ns = int(published.started * 1e9)
        self.results["throughput"] = report.throughput_points(
            report.merge_buckets(results), start_ns, clients.BUCKET_NS
        )
        self.results["latency_samples_ms"] = [s / 1e6 for s in samples[:20_000]]
        self._latency_all_ms = [s / 1e6 for s in samples]
        return summary

    def _connecting(self, results: list[dict[str, Any]], m: dict[str, Any]) -> dict[str, Any]:
        """Connect rate, from the first attempt to the last handshake across client processes,
        and what connecting cost the hub."""
        connect_times = sorted(t for r in results for t in r["connect_times"])
        firsts = [r["first_attempt"] for r in results if r["first_attempt"]]
        lasts = [r["last_connected"] for r in results if r["last_connected"]]
        window = max(lasts) - min(firsts) if firsts and lasts else math.nan
        out: dict[str, Any] = {
            "connected": m["connected"],
            "connect_failed": m["failed"],
            "connect_seconds": window,
            "connect_rate": m["connected"] / max(window, 1e-9),
            "connect_p50_ms": report.percentile(connect_times, 0.5) * 1000,
            "connect_p99_ms": report.percentile(connect_times, 0.99) * 1000,
        }
        before, after = m["before"], m["after_connect"]
        if before and after and not math.isnan(window):
            cpu = after.cpu_seconds - before.cpu_seconds
            out["hub_cpu_connect_percent"] = 100 * cpu / max(window, 1e-9)
        out["generator_cpu_connect_percent"] = (
            100 * m["connect_workers_cpu"] / max(window, 1e-9) / self.args.procs
        )
        if before and after:
            out["hub_rss_before_mb"] = before.rss_bytes / 2**20
            out["hub_rss_connected_mb"] = after.rss_bytes / 2**20
            grown = after.rss_bytes - before.rss_bytes
            out["rss_per_socket_kb"] = grown / max(m["connected"], 1) / 1024
        return out

    @staticmethod
    def _delivery(
        results: list[dict[str, Any]], published: Published, m: dict[str, Any]
    ) -> dict[str, Any]:
        """What arrived against what was published. Throughput runs from the first publish to
        the last event received, exactly: the drain loop only polls."""
        sockets = [s for r in results for s in r["sockets"]]
        per_account = published.per_account
        delivered = sum(s["received"] for s in sockets)
        last_received = max((r["last_received"] for r in results), default=0.0)
        seconds = last_received - published.started if delivered else m["elapsed"]
        return {
            "expected_deliveries": m["expected"],
            "delivered": delivered,
            "lost": sum(max(0, per_account.get(s["account"], 0) - s["distinct"]) for s in sockets),
            "duplicated": sum(s["duplicates"] for s in sockets),
            "reordered": sum(s["reordered"] for s in sockets),
            "delivery_seconds": seconds,
            "delivered_per_s": delivered / max(seconds, 1e-9),
        }

    def _costs(self, delivered: int, m: dict[str, Any]) -> dict[str, Any]:
        """Hub CPU, Redis commands and generator CPU over the load phase."""
        elapsed = max(m["elapsed"], 1e-9)
        out: dict[str, Any] = {}
        if m["hub_before"] and m["hub_after"]:
            cpu = m["hub_after"].cpu_seconds - m["hub_before"].cpu_seconds
            out["hub_cpu_percent"] = 100 * cpu / elapsed
            out["hub_cpu_us_per_delivery"] = 1e6 * cpu / max(delivered, 1)
        if m["redis_before"] and m["redis_after"]:
            calls = command_delta(m["redis_before"][0], m["redis_after"][0])
            out["redis_commands"] = calls
            out["redis_commands_per_s"] = sum(calls.values()) / elapsed
            out["redis_commands_per_delivery"] = sum(calls.values()) / max(delivered, 1)
            reads = sum(calls.get(name, 0) for name in ("xread", "xrange", "xrevrange"))
            out["read_commands_per_delivery"] = reads / max(delivered, 1)
            out["redis_cpu_percent"] = 100 * (m["redis_after"][1] - m["redis_before"][1]) / elapsed
        out["generator_cpu_percent_per_proc"] = 100 * m["workers_cpu"] / elapsed / self.args.procs
        out["publisher_cpu_percent"] = 100 * m["main_cpu"] / elapsed
        return out

    @staticmethod
    def _warnings(summary: dict[str, Any], published: Published) -> list[str]:
        warnings = []
        if summary["generator_cpu_percent_per_proc"] > 90:
            warnings.append(
                "client processes were saturated: the generator, not the hub, may be the "
                "limit (add --procs)"
            )
        if published.max_lag > 1.0 or summary["publisher_cpu_percent"] > 90:
            warnings.append(
                f"the publisher fell {published.max_lag:.1f} s behind its schedule: "
                "the rate was not reached"
            )
        if summary["lost"] or summary["duplicated"] or summary["reordered"]:
            warnings.append("events were lost, duplicated or reordered")
        return warnings

    def rows(self) -> list[tuple[str, str]]:
        s = self.results["summary"]
        lat = s["latency_ms"]
        rows = [
            (
                "sockets connected",
                f"{s['connected']}/{s['sockets']} ({s['connect_failed']} failed)",
            ),
            (
                "CPU while connecting",
                f"hub {s.get('hub_cpu_connect_percent', math.nan):.0f}%, "
                f"client processes {s['generator_cpu_connect_percent']:.0f}% each",
            ),
            (
                "connect rate",
                f"{s['connect_rate']:.0f}/s (p50 {s['connect_p50_ms']:.1f} ms, "
                f"p99 {s['connect_p99_ms']:.1f} ms)",
            ),
            (
                "published",
                f"{s['published']} ({s['publish_failed']} failed), "
                f"publisher lag max {s['publisher_max_lag_s']:.2f} s",
            ),
            (
                "delivered",
                f"{s['delivered']}/{s['expected_deliveries']} ({s['delivered_per_s']:.0f}/s)",
            ),
            (
                "lost / duplicated / reordered",
                f"{s['lost']} / {s['duplicated']} / {s['reordered']}",
            ),
            (
                "latency p50 / p90 / p99",
                f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} ms",
            ),
            ("latency p99.9 / max", f"{lat['p99.9']:.2f} / {lat['max']:.2f} ms"),
        ]
        if "rss_per_socket_kb" in s:
            rows.append(
                (
                    "hub RSS",
                    f"{s['hub_rss_before_mb']:.1f} → {s['hub_rss_connected_mb']:.1f} MB "
                    f"({s['rss_per_socket_kb']:.1f} KB/socket)",
                )
            )
        if "hub_cpu_percent" in s:
            rows.append(
                (
                    "hub CPU under load",
                    f"{s['hub_cpu_percent']:.0f}% ({s['hub_cpu_us_per_delivery']:.1f} µs/delivery)",
                )
            )
        if "hub_cpu_percent" in s["idle"]:
            rows.append(("hub CPU idle", f"{s['idle']['hub_cpu_percent']:.1f}%"))
        if "redis_commands_per_s" in s["idle"]:
            rows.append(
                (
                    "Redis idle",
                    f"{s['idle']['redis_commands_per_s']:.2f} commands/s "
                    f"{s['idle']['redis_commands']}",
                )
            )
        if "redis_commands_per_s" in s:
            top = dict(sorted(s["redis_commands"].items(), key=lambda kv: -kv[1])[:5])
            rows.append(
                (
                    "Redis under load",
                    f"{s['redis_commands_per_s']:.0f} commands/s, "
                    f"{s['redis_commands_per_delivery']:.3f}/delivery "
                    f"({s['read_commands_per_delivery']:.3f} stream reads), "
                    f"CPU {s['redis_cpu_percent']:.0f}% {top}",
                )
            )
        rows.append(
            (
                "generator CPU",
                f"{s['generator_cpu_percent_per_proc']:.0f}% per client process, "
                f"publisher {s['publisher_cpu_percent']:.0f}%",
            )
        )
        rows += [("WARNING", w) for w in s["warnings"]]
        rows += [("error", e) for e in s["errors"]]
        return rows

    def write(self) -> None:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "loadtest.json").write_text(json.dumps(self.results, indent=2, default=str))
        charts = [
            report.chart_latency_cdf({"hub": self._latency_all_ms}),
            report.chart_throughput({"delivered": self.results["throughput"]}),
        ]
        (out / "loadtest.html").write_text(report.html_report("hub load test", self.rows(), charts))


def main() -> int:
    args = parse_args()
    run = Run(args)
    run.run()
    print(report.format_table(run.rows(), "hub load test"))
    run.write()
    print(f"\nwrote {args.out / 'loadtest.json'} and {args.out / 'loadtest.html'}", file=sys.stderr)
    summary = run.results["summary"]
    return 1 if summary["lost"] or summary["duplicated"] or summary["reordered"] else 0


if __name__ == "__main__":
    sys.exit(main())
