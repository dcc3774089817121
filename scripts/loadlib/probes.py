"""What the load generator reads off the machine: process CPU and memory, Redis counters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float  # user + system, since the process started
    rss_bytes: int


def sample_process(pid: int) -> ProcessSample:
    """The hub's CPU and memory: the process and its descendants (the workers of `hub serve
    --workers N`), but not an embedded redis-server, which is measured on its own."""
    cpu, rss = 0.0, 0
    for member in [pid, *_descendants(pid)]:
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
            status = Path(f"/proc/{member}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        name, fields = stat.split("(", 1)[1].rsplit(")", 1)
        if member != pid and name.startswith("redis-server"):
            continue
        fields_list = fields.split()
        cpu += (int(fields_list[11]) + int(fields_list[12])) / CLOCK_TICKS  # utime, stime
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return ProcessSample(cpu, rss)


def _parents() -> dict[int, int]:
    """Every process's parent PID."""
    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return parents


def _descendants(pid: int) -> list[int]:
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def hub_root(pid: int) -> int:
    """The `hub serve` a listening worker belongs to: its supervisor, if it has one."""
    parents = _parents()
    parent = parents.get(pid)
    while parent is not None and b"serve" in _cmdline(parent) and b"hub" in _cmdline(parent):
        pid, parent = parent, parents.get(parent)
    return pid


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def pid_listening_on(port: int) -> int | None:
    """The PID of the process with a TCP socket listening on `port` (any address), if any."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return None


class RedisProbe:
    """`INFO commandstats` and CPU of the Redis the hub uses."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10)

    def command_calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def cpu_seconds(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def snapshot(self) -> tuple[dict[str, int], float]:
        return self.command_calls(), self.cpu_seconds()


# Commands the probe itself sends; they are left out of every count.
PROBE_COMMANDS = frozenset({"info", "hello", "client|setinfo", "ping"})


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {n: c for n, c in delta.items() if c > 0 and n not in PROBE_COMMANDS}
