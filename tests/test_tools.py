"""The load test and the benchmark run end to end (tiny sizes): the tools users measure with."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from hub.config import AuthMode, Settings
from hub.web.state import STATS
from tests.support import SECRET, RedisServer, free_port, token, wait_until

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
    page = (tmp_path / "loadtest.html").read_text()
    assert "<svg" in page
    assert "e+" not in page  # axis labels are plain numbers
    assert "from 1 process\n" in output  # not "1 processes"
    # The clients close as well-behaved ones do: the hub saw 1000s, not 1006s.
    await wait_until(
        lambda: client.app[STATS].closed == {"1000": 20}, what="the clean closes to be counted"
    )


async def test_loadtest_opens_event_streams_too(
    make_client: Any, settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = await make_client(settings, auth=AuthMode.OFF, secret=None)
    # fmt: off
    code, output = await run(
        "scripts/loadtest.py", "--url", str(client.make_url("")).rstrip("/"),
        "--transport", "sse", "--sockets", "10", "--accounts", "2", "--events", "20",
        "--spread-sources",
        "--rate", "400", "--idle", "0.5", "--ramp", "0", "--procs", "1", "--no-auth",
        "--redis-url", redis_server.url, "--out", str(tmp_path),
    )
    # fmt: on
    assert code == 0, output
    summary = json.loads((tmp_path / "loadtest.json").read_text())["summary"]
    assert summary["delivered"] == summary["expected_deliveries"] == 20 * 5
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0)
    assert client.app[STATS].opened["sse"] == 10


def test_axis_labels_are_round_numbers_that_cover_the_data() -> None:
    from loadlib.report import axis_label, nice_ticks

    assert nice_ticks(0, 9_990) == [0, 5_000, 10_000]
    assert nice_ticks(0.3, 12.7) == [0, 5, 10, 15]  # time from 0, never -0.03
    assert [axis_label(v) for v in nice_ticks(0, 254_800)] == [
        "0",
        "100,000",
        "200,000",
        "300,000",
    ]
    assert [axis_label(v) for v in (0.001, 0.5, 2.5, 1_990)] == ["0.001", "0.5", "2.5", "1,990"]


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


async def test_ws_tail_prints_frames_and_how_the_socket_ended(
    make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings)
    url = str(client.make_url("/ws/1?last_id=0")).replace("http", "ws", 1)
    env = {**os.environ, "HUB_TOKEN": token("1")}
    refused = await run("scripts/ws_tail.py", url.replace("/ws/1", "/ws/2"), env=env)
    assert refused == (1, "refused: 4403 forbidden\n")
    nowhere = f"ws://127.0.0.1:{free_port()}/ws/1"
    code, output = await run("scripts/ws_tail.py", nowhere, env=env)
    assert code == 1
    assert output.startswith("refused: 1006")
    assert "Traceback" not in output
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "scripts/ws_tail.py", url, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert tail.stdin is not None
    assert tail.stdout is not None
    assert tail.stderr is not None
    welcome = json.loads(await asyncio.wait_for(tail.stdout.readline(), 20))
    assert welcome["op"] == "welcome"
    tail.stdin.write(b"ping\n")
    assert await asyncio.wait_for(tail.stdout.readline(), 10) == b"pong\n"
    await client.server.close()  # a drain: 1001 and the last ID; the tool ends by itself
    assert await asyncio.wait_for(tail.wait(), 20) == 0
    ended = (await tail.stderr.read()).decode()
    assert ended.startswith("closed: 1001 0-0")
