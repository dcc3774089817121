"""A single Redis node against a 3-master Redis Cluster, the same hub process in front, in one
invocation: publishes and deliveries per second, and what each Redis master did.

For each backend a fresh `hub serve` (HUB_AUTH=off) gets `--sockets` sockets over `--accounts`
accounts and `--events` events published over HTTP at `--rate` per second (the hub's own
publish path: on the cluster, each publish waits for its replica with HUB_WAIT_REPLICAS=1,
or not with 0). Everything runs on 127.0.0.1 and stops by itself. Prints a table with ratios
to the single node and writes it to results/cluster-bench.md.

    .venv/bin/python scripts/bench/cluster.py [--sockets 1000 --accounts 200 --events 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from redis.crc import key_slot

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import loadtest  # noqa: E402
from loadlib.processes import RedisProcess, free_port  # noqa: E402
from run import ROOT, start  # noqa: E402

from hub.config import Settings  # noqa: E402
from hub.core.keys import Layout  # noqa: E402


class Node(RedisProcess):
    """One redis-server on a free loopback port, started at once."""

    def __init__(self, directory: Path, extra: tuple[str, ...] = ()) -> None:
        super().__init__(directory, extra=extra)
        self.start()

    def is_master_with_slots(self) -> bool:
        line = next(
            line
            for line in self.client.execute_command("CLUSTER", "NODES").decode().splitlines()
            if "myself" in line
        )
        return "master" in line.split()[2] and len(line.split()) > 8


def single(directory: Path) -> list[Node]:
    return [Node(directory / "single")]


def cluster(directory: Path) -> list[Node]:
    """Three masters with a replica each; the masters are returned first."""
    nodes = []
    for n in range(6):
        node_dir = directory / f"node{n}"
        # fmt: off
        extra = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-port", str(free_port()),
        )
        # fmt: on
        nodes.append(Node(node_dir, extra))
    subprocess.run(
        [
            *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)),
            *("--cluster-replicas", "1", "--cluster-yes"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    deadline = time.time() + 30
    while not all(n.client.cluster("info")["cluster_state"] == "ok" for n in nodes):
        if time.time() > deadline:
            raise RuntimeError("the cluster did not come up")
        time.sleep(0.1)
    masters = [n for n in nodes if n.is_master_with_slots()]
    return masters + [n for n in nodes if n not in masters]


def measure(name: str, nodes: list[Node], masters: int, env: dict[str, str], args: Any) -> dict:
    port = free_port()
    os.environ.update(env)
    hub = start("hub", port, nodes[0].url)
    try:
        before = [(n.cpu_seconds(), n.calls()) for n in nodes]
        argv = [
            *("--url", f"http://127.0.0.1:{port}", "--no-auth", "--prefix", "c"),
            *("--sockets", str(args.sockets), "--accounts", str(args.accounts)),
            *("--rate", str(args.rate), "--events", str(args.events), "--idle", "0"),
            *("--procs", "1", "--ramp", "0.5", "--hub-pid", str(hub.pid)),
            *("--publish-via", "http", "--out", str(args.out / f"cluster-bench-{name}")),
        ]
        summary = loadtest.Run(loadtest.parse_args(argv)).run()
        after = [(n.cpu_seconds(), n.calls()) for n in nodes]
        index_reads = notifier_reads(port)
    finally:
        hub.terminate()
        hub.wait(timeout=15)
        for key in env:
            os.environ.pop(key, None)
    seconds = max(summary["delivery_seconds"], 1e-9)
    per_node = []
    shards_of = shards_by_node(nodes[:masters])
    for n, ((cpu0, calls0), (cpu1, calls1)) in enumerate(
        zip(before[:masters], after[:masters], strict=True)
    ):
        spent = {c: calls1.get(c, 0) - calls0.get(c, 0) for c in calls1}
        per_node.append(
            {
                "cpu_percent": 100 * (cpu1 - cpu0) / seconds,
                "publishes": spent.get("evalsha", 0),
                "xreads": spent.get("xread", 0),
                "index_reads": sum(index_reads.get(s, 0) for s in shards_of[n]),
            }
        )
    return {
        "published_per_s": summary["published"] / seconds,
        "delivered_per_s": summary["delivered_per_s"],
        "p50": summary["latency_ms"]["p50"],
        "p99": summary["latency_ms"]["p99"],
        "hub_us": summary.get("hub_cpu_us_per_delivery", float("nan")),
        "broken": summary["lost"] + summary["duplicated"] + summary["reordered"],
        "failed": summary["publish_failed"],
        "nodes": per_node,
    }


def notifier_reads(port: int) -> dict[int, int]:
    """The hub's index reads by shard (`hub_notifier_reads_total{shard}`), since it started
    (the idle seconds before the load add a few)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    reads = {}
    for line in text.decode().splitlines():
        found = re.fullmatch(r'hub_notifier_reads_total\{shard="(\d+)"\} ([\d.e+]+)', line)
        if found:
            reads[int(found[1])] = int(float(found[2]))
    return reads


def shards_by_node(masters: list[Node]) -> list[set[int]]:
    """Which index shards each master serves (shard 0 alone on a single node)."""
    if len(masters) == 1:
        return [{0}]
    layout = Layout(Settings().index_shards)
    slots = {s: key_slot(layout.index(s).encode()) for s in layout.index_shards()}
    served = []
    for node in masters:
        ranges = node_ranges(node)
        served.append({s for s, slot in slots.items() if any(a <= slot <= b for a, b in ranges)})
    return served


def node_ranges(node: Node) -> list[tuple[int, int]]:
    line = next(
        line
        for line in node.client.execute_command("CLUSTER", "NODES").decode().splitlines()
        if "myself" in line
    )
    ranges = []
    for part in line.split()[8:]:
        start, _, end = part.partition("-")
        ranges.append((int(start), int(end or start)))
    return ranges


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    base = results[names[0]]
    rows = [
        ("publishes/s (acknowledged)", "published_per_s", "{:,.0f}"),
        ("deliveries/s", "delivered_per_s", "{:,.0f}"),
        ("latency p50 ms", "p50", "{:.1f}"),
        ("latency p99 ms", "p99", "{:.1f}"),
        ("hub CPU µs per delivery", "hub_us", "{:.1f}"),
        ("lost + duplicated + reordered", "broken", "{:d}"),
    ]
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, key, form in rows:
        cells = []
        for name in names:
            value = results[name][key]
            cell = form.format(value)
            if name != names[0] and key not in ("broken",) and base[key]:
                cell += f" ({value / base[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, key, form in [
        ("Redis CPU % per master", "cpu_percent", "{:.0f}"),
        ("publishes (EVALSHA) per master", "publishes", "{:,}"),
        ("index reads per master", "index_reads", "{:,}"),
        ("XREAD (index + streams) per master", "xreads", "{:,}"),
    ]:
        cells = [" / ".join(form.format(n[key]) for n in results[n_]["nodes"]) for n_ in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=4_000)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    if shutil.which("redis-cli") is None:
        print("redis-cli is needed (apt-get install redis-server)", file=sys.stderr)
        return 2
    args.out.mkdir(exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hub-cluster-bench-") as tmp:
        directory = Path(tmp)
        nodes = single(directory)
        try:
            results["single node"] = measure("single", nodes, 1, {}, args)
        finally:
            for node in nodes:
                node.stop()
        nodes = cluster(directory)
        try:
            for wait in (1, 0):
                for node in nodes[:3]:
                    node.client.flushall()
                env = {"HUB_WAIT_REPLICAS": str(wait)}
                results[f"cluster, WAIT {wait}"] = measure(f"cluster-w{wait}", nodes, 3, env, args)
        finally:
            for node in nodes:
                node.stop()
    text = (
        f"{args.sockets:,} sockets over {args.accounts:,} accounts, {args.events:,} events "
        f"published over HTTP at up to {args.rate:,.0f}/s, one hub process\n\n{table(results)}\n"
    )
    print(text)
    (args.out / "cluster-bench.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
