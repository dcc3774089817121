#!/usr/bin/env python3
"""Side-by-side benchmark: the hub against three baselines, same workloads, one invocation.

    .venv/bin/python scripts/bench/run.py            # all workloads, ~10 minutes
    .venv/bin/python scripts/bench/run.py --quick    # smaller and shorter

Implementations: the hub; the seed tutorial's polling (XREAD every second per socket); one
blocking XREAD per socket on its own connection; and the floor, a raw aiohttp fan-out with no
Redis. Each runs alone on 127.0.0.1 against a fresh redis-server, under the same load from
scripts/loadtest.py. Prints the hub's ratio to each baseline and writes results/bench.json,
results/bench.md and results/bench.svg.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

import loadtest  # noqa: E402
from loadlib import report  # noqa: E402
from loadlib.processes import RedisProcess, free_port  # noqa: E402

IMPLEMENTATIONS = ("hub", "hub-batch", "hub-sse", "hub-w2", "polling", "blocking", "floor")
# hub-batch: the hub, its clients asking for several events per frame (?batch=1)
# hub-sse: the hub, its clients event streams (/sse) as EventSource opens them
# hub-w2: the hub with two workers on the port (hub serve --workers 2)
RATIOS = [
    ("hub", "polling"),
    ("hub", "blocking"),
    ("hub", "floor"),
    ("hub-batch", "floor"),
    ("hub-sse", "hub"),
    ("hub-w2", "hub"),
]


@dataclass(frozen=True)
class Workload:
    name: str
    sockets: int
    accounts: int
    rate: float
    events: int
    idle: float = 0.0
    note: str = ""


def workloads(scale: float) -> list[Workload]:
    n = max(10, int(1000 * scale))
    accounts = max(1, n // 10)
    return [
        Workload(
            "idle",
            2 * n,
            2 * accounts,
            1,
            0,
            idle=5.0,
            note="no events: the cost of holding sockets",
        ),
        Workload("one account", n, 1, 40, int(400 * scale), note=f"{n} sockets on one account"),
        Workload(
            "many accounts",
            n,
            accounts,
            2000,
            int(10000 * scale),
            note=f"{n} sockets over {accounts} accounts, pushed hard",
        ),
        Workload(
            "burst", n, accounts, 1e6, int(20000 * scale), note="published as fast as possible"
        ),
        # Runs after the burst: its rate becomes half of the hub's burst throughput (`at_half`).
        Workload(
            "half load", n, accounts, 500, int(5000 * scale), note="latency at a moderate rate"
        ),
    ]


HALF_LOAD_SECONDS = 8


def at_half(workload: Workload, burst: dict[str, Any] | None, scale: float) -> Workload:
    """The half-load workload at half the hub's measured maximum: the burst's delivered/s,
    halved and divided by the sockets each event reaches. Every implementation gets that
    same rate. Without a hub burst result, the workload keeps its fixed rate."""
    if not burst:
        return workload
    fan_out = workload.sockets / workload.accounts
    rate = round(burst["delivered_per_s"] / 2 / fan_out)
    return dataclasses.replace(
        workload,
        rate=rate,
        events=max(1, int(rate * HALF_LOAD_SECONDS * scale)),
        note=f"half the hub's burst throughput: {rate:,} events/s, {rate * fan_out:,.0f} "
        "deliveries/s",
    )


class Redis(RedisProcess):
    """A throwaway redis-server for the benchmark, started at once."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.start()


BUILDS: dict[str, Path] = {}  # hub@REF → a checkout of that commit (--against)


def checkout(ref: str, out: Path) -> Path:
    """A worktree of the repository at `ref`, for the hub as it was (`--against`)."""
    directory = out / f"hub@{ref.replace('/', '_')}"
    if directory.exists():
        remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(directory)]
        subprocess.run(remove, check=False)
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(directory), ref],
        check=True,
        capture_output=True,
    )
    return directory


def start(implementation: str, port: int, redis_url: str) -> subprocess.Popen[bytes]:
    python = sys.executable
    cwd = ROOT
    if implementation.startswith("hub"):
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "HUB_AUTH": "off",
            "HUB_PORT": str(port),
            "HUB_LOG_LEVEL": "warning",
            # The workloads put 1,000 sockets on one account and connect as fast as they can.
            "HUB_MAX_SOCKETS_PER_ACCOUNT": "0",
            "HUB_MAX_ACCEPT_RATE": "0",
            "HUB_WORKERS": "2" if implementation == "hub-w2" else "1",
        }
        env.pop("HUB_SECRET", None)
        command = [python, "-m", "hub", "serve"]
        if implementation in BUILDS:  # `python -m hub` finds the package in its directory
            cwd = BUILDS[implementation]
            env["PYTHONPATH"] = str(cwd)
    else:
        env = dict(os.environ)
        command = [
            python,
            str(HERE / f"{implementation}.py"),
            "--port",
            str(port),
            "--redis-url",
            redis_url,
        ]
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=1)
        except urllib.error.HTTPError:
            return process  # answering (404)
        except OSError:
            time.sleep(0.1)
            continue
        return process
    process.kill()
    raise RuntimeError(f"{implementation} did not start")


def run_one(
    implementation: str, workload: Workload, redis: Redis, procs: int, out: Path
) -> dict[str, Any]:
    redis.flush()
    port = free_port()
    server = start(implementation, port, redis.url)
    try:
        argv = [
            "--url",
            f"http://127.0.0.1:{port}",
            "--sockets",
            str(workload.sockets),
            "--accounts",
            str(workload.accounts),
            "--rate",
            str(workload.rate),
            "--events",
            str(workload.events),
            "--idle",
            str(workload.idle),
            "--redis-url",
            redis.url,
            "--no-auth",
            "--procs",
            str(procs),
            "--ramp",
            "0.5",
            "--hub-pid",
            str(server.pid),
            "--out",
            str(out / f"{implementation}-{workload.name.replace(' ', '-')}"),
            "--prefix",
            "b",
            "--publish-via",
            "firehose" if implementation == "floor" else "redis",
            *(["--batch"] if implementation == "hub-batch" else []),
            *(["--transport", "sse"] if implementation == "hub-sse" else []),
        ]
        run = loadtest.Run(loadtest.parse_args(argv))
        summary = run.run()
        samples = run._latency_all_ms
        summary["latency_samples_ms"] = random.Random(0).sample(samples, min(5000, len(samples)))
        return summary
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.2f}x"


METRICS = [
    ("delivered/s", lambda s: s["delivered_per_s"], "higher is better"),
    ("latency p50 ms", lambda s: s["latency_ms"]["p50"], "lower is better"),
    ("latency p99 ms", lambda s: s["latency_ms"]["p99"], "lower is better"),
    ("Redis cmds/s", lambda s: s.get("redis_commands_per_s"), "lower is better"),
    ("Redis cmds/s idle", lambda s: s["idle"].get("redis_commands_per_s"), "lower is better"),
    ("read cmds/delivery", lambda s: s.get("read_commands_per_delivery"), "lower is better"),
    ("CPU µs/delivery", lambda s: s.get("hub_cpu_us_per_delivery"), "lower is better"),
    ("RSS KB/socket", lambda s: s.get("rss_per_socket_kb"), "lower is better"),
    ("lost+dup+reordered", lambda s: s["lost"] + s["duplicated"] + s["reordered"], "must be 0"),
]


def value(summary: dict[str, Any], metric: Any) -> float | None:
    try:
        result = metric(summary)
    except (KeyError, TypeError):
        return None
    return None if result is None else float(result)


def markdown(
    results: dict[str, dict[str, dict[str, Any]]], notes: dict[str, str], machine: str
) -> str:
    lines = [f"Machine: {machine}", ""]
    for workload, by_impl in results.items():
        pairs = [(a, b) for a, b in RATIOS if a in by_impl and b in by_impl]
        lines += [f"**{workload}** ({notes[workload]})", ""]
        header = [*by_impl, *(f"{a} ÷ {b}" for a, b in pairs)]
        lines.append("| metric | " + " | ".join(header) + " |")
        lines.append("|---|" + "---|" * len(header))
        for name, metric, _ in METRICS:
            cells = [value(s, metric) for s in by_impl.values()]
            shown = ["—" if c is None else f"{c:,.2f}" for c in cells]
            ratios = [ratio(value(by_impl[a], metric), value(by_impl[b], metric)) for a, b in pairs]
            lines.append(f"| {name} | " + " | ".join(shown + ratios) + " |")
        lines.append("")
    return "\n".join(lines)


def write_charts(results: dict[str, dict[str, dict[str, Any]]], out: Path, machine: str) -> None:
    """One latency CDF per workload (bench-<workload>.svg) and all of them in bench.html."""
    charts = []
    for workload, by_impl in results.items():
        series = {
            i: s["latency_samples_ms"] for i, s in by_impl.items() if s.get("latency_samples_ms")
        }
        if not series:
            continue
        chart = report.chart_latency_cdf(series)
        chart = chart.replace("Publish → receive latency (CDF)", f"Latency CDF: {workload}")
        (out / f"bench-{workload.replace(' ', '-')}.svg").write_text(chart)
        charts.append(chart)
    (out / "bench.html").write_text(
        report.html_report("hub benchmark", [("machine", machine)], charts)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the sockets and events")
    parser.add_argument("--scale", type=float, help="sockets and events relative to the default")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=IMPLEMENTATIONS,
        default=[i for i in IMPLEMENTATIONS if i != "hub-w2"],
        help="implementations to run (default: all but hub-w2)",
    )
    parser.add_argument("--workloads", nargs="*", help="names of workloads to run (default: all)")
    parser.add_argument("--procs", type=int, default=1, help="load-generator client processes")
    parser.add_argument(
        "--against",
        metavar="REF",
        help="also run the hub as of this git commit (e.g. HEAD~1), as hub@REF: a change's "
        "cost, measured in the same invocation",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    only = list(args.only)
    if args.against:
        name = f"hub@{args.against}"
        BUILDS[name] = checkout(args.against, out)
        only.append(name)
        RATIOS.append(("hub", name))
    redis = Redis(out / "redis")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    notes: dict[str, str] = {}
    try:
        scale = args.scale if args.scale else 0.5 if args.quick else 1.0
        for planned in workloads(scale):
            if args.workloads and planned.name not in args.workloads:
                continue
            workload = planned
            if planned.name == "half load":
                workload = at_half(planned, results.get("burst", {}).get("hub"), scale)
            notes[workload.name] = workload.note
            results[workload.name] = {}
            for implementation in only:
                print(
                    f"== {workload.name} ({workload.note}): {implementation}",
                    file=sys.stderr,
                    flush=True,
                )
                summary = run_one(implementation, workload, redis, args.procs, out)
                results[workload.name][implementation] = summary
                print(
                    report.format_table(
                        [(n, f"{value(summary, m)}") for n, m, _ in METRICS], implementation
                    ),
                    file=sys.stderr,
                )
    finally:
        redis.stop()
        for directory in BUILDS.values():
            remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(directory)]
            subprocess.run(remove, check=False)
    table = markdown(results, notes, machine)
    print(table)
    (out / "bench.md").write_text(table + "\n")
    (out / "bench.json").write_text(
        json.dumps(
            {"machine": machine, "workloads": notes, "results": results}, indent=1, default=str
        )
    )
    write_charts(results, out, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
