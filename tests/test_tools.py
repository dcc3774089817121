"""The load test and the benchmark run end to end (tiny sizes): the tools users measure with."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from hub.config import AuthMode, Settings
from tests.support import SECRET, RedisServer

ROOT = Path(__file__).resolve().parent.parent


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    return process.returncode or 0, output.decode()


async def test_loadtest_measures_a_hub(
    make_client: Any, settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = await make_client(settings, auth=AuthMode.OFF, secret=None)
    # fmt: off
    code, output = await run(
        "scripts/loadtest.py", "--url", str(client.make_url("")).rstrip("/"),
        "--sockets", "20", "--accounts", "4", "--events", "40", "--rate", "400",
        "--idle", "0.5", "--ramp", "0", "--procs", "1", "--no-auth",
        "--redis-url", redis_server.url, "--out", str(tmp_path),
    )
    # fmt: on
    assert code == 0, output
    assert "latency p50" in output
    summary = json.loads((tmp_path / "loadtest.json").read_text())["summary"]
    assert summary["connected"] == 20
    assert summary["published"] == 40
    assert summary["delivered"] == summary["expected_deliveries"] == 40 * 5
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0)
    assert summary["latency_ms"]["p50"] > 0
    assert "xread" in summary["redis_commands"]
    assert "<svg" in (tmp_path / "loadtest.html").read_text()


async def test_benchmark_compares_the_hub_with_the_floor(tmp_path: Path) -> None:
    # fmt: off
    code, output = await run(
        "scripts/bench/run.py", "--scale", "0.02", "--workloads", "burst", "half load",
        "--only", "hub", "floor", "--out", str(tmp_path),
    )
    # fmt: on
    assert code == 0, output
    table = (tmp_path / "bench.md").read_text()
    assert "| delivered/s |" in table
    assert "hub ÷ floor" in table
    bench = json.loads((tmp_path / "bench.json").read_text())
    for workload in ("burst", "half load"):
        for implementation in ("hub", "floor"):
            summary = bench["results"][workload][implementation]
            assert summary["lost"] == summary["duplicated"] == summary["reordered"] == 0
            assert summary["delivered"] == summary["expected_deliveries"] > 0
    # Half load: half the hub's burst throughput, over 20 sockets on 2 accounts (10 per event).
    half = round(bench["results"]["burst"]["hub"]["delivered_per_s"] / 2 / 10)
    assert f"{half:,} events/s" in bench["workloads"]["half load"]


async def test_probe_prints_a_table_of_verdicts(
    make_client: Any, settings: Settings, tmp_path: Path
) -> None:
    client = await make_client(settings, body_timeout=1.0)
    url = str(client.make_url("")).rstrip("/")
    env = {**os.environ, "HUB_SECRET": SECRET}
    # fmt: off
    code, output = await run(
        "scripts/probe.py", "--url", url, "--quick", "--body-timeout", "1",
        "--json", str(tmp_path / "p.json"), env=env,
    )
    # fmt: on
    assert code == 0, output
    rows = json.loads((tmp_path / "p.json").read_text())
    assert {row["probe"] for row in rows} >= {"unmasked frame", "payload 255 levels deep"}
    assert all(row["ok"] for row in rows)
    assert "unmasked frame" in output
    assert "close 1002" in output

    code, output = await run("scripts/probe.py", "--url", "http://10.0.0.1:8080", env=env)
    assert code == 2
    assert "loopback" in output
