"""Real parts for tests: a redis-server process, tokens, and waiting on conditions."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis
from aiohttp import ClientWebSocketResponse, WSMsgType

from hub.config import Settings
from hub.core.auth import mint
from hub.core.keys import SINGLE, Layout
from hub.redis.embedded import die_with_parent

SECRET = "test-secret-that-is-at-least-32-characters-long"
REDIS_BINARY = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
CLUSTER_CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")
CLUSTER_LAYOUT = Layout(Settings().index_shards)
"""The key layout a hub with default settings uses on a cluster."""


LISTEN_PORTS = range(20_000, 32_768)
"""Below the kernel's ephemeral range (32768 to 60999): a port picked there can be taken by any
outgoing connection before the server binds it, and the suite opens thousands."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range."""
    while True:
        port = random.choice(LISTEN_PORTS)
        if port in _HANDED_OUT:  # perhaps not bound yet by the one it was handed to
            continue
        _HANDED_OUT.add(port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class RedisServer:
    """A real redis-server on a free loopback port that tests can stop, kill and restart."""

    layout = SINGLE

    def __init__(
        self, directory: Path, *, appendonly: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        if REDIS_BINARY is None:
            raise RuntimeError("redis-server is not installed: run ./run setup (or apt-get)")
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # fmt: off
        args = [
            str(REDIS_BINARY), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--maxclients", "10000", "--logfile", str(self.directory / "redis.log"),
            *self.extra,
        ]
        # fmt: on
        # Dies with the test run, even a killed one (the fork happens on the main thread).
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        try:
            wait_for(self._answers, timeout=10)
        except AssertionError:
            self.kill()
            raise RuntimeError(
                f"redis-server did not start; see {self.directory}/redis.log"
            ) from None

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError("redis-server exited")
        with self.client() as client:  # closed at once: no socket left to the collector
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.kill()
        self.start()

    def command_calls(self) -> dict[str, int]:
        """`INFO commandstats` as {command: calls}."""
        stats = self.client().info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def flushall(self) -> None:
        self.client().flushall()


class RedisCluster:
    """A real Redis Cluster of `masters` masters with one replica each, on loopback ports.

    Failure detection is fast (1 s node timeout) and a replica always may take over, however
    long it was cut off, so that tests can kill a master and watch the failover.
    """

    layout = CLUSTER_LAYOUT

    def __init__(self, directory: Path, *, masters: int = 3, appendonly: bool = False) -> None:
        self.nodes = [
            RedisServer(directory / f"node{n}", appendonly=appendonly) for n in range(masters * 2)
        ]
        for node in self.nodes:
            # fmt: off
            node.extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / "nodes.conf"),
                "--cluster-port", str(free_port()),  # else port + 10000, which may not exist
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",
                "--cluster-allow-reads-when-down", "no",
            )
            # fmt: on

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [str(REDIS_CLI), "--cluster", "create", *addresses, *CLUSTER_CREATE_OPTIONS],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.live()[0].port, socket_timeout=10)

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def masters(self) -> list[RedisServer]:
        """The live nodes that serve slots now."""
        return [
            node
            for node in self.live()
            if node.client().info("replication")["role"] == "master" and _owns_slots(node)
        ]

    def master_of(self, key: str) -> RedisServer:
        slot = self.client().keyslot(key)
        for node in self.masters():
            for start, end in _slot_ranges(node):
                if start <= slot <= end:
                    return node
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        master_id = master.client().execute_command("CLUSTER", "MYID").decode()
        for node in self.live():
            info = node.client().info("replication")
            if info["role"] == "slave" and node.client().execute_command(
                "CLUSTER", "NODES"
            ).decode().count(f"myself,slave {master_id}"):
                return node
        raise LookupError(f"master {master.port} has no live replica")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node sees the cluster `ok` and the same slot map, and every replica is
        in sync with its master."""

        def healthy() -> bool:
            try:
                views = set()
                for node in self.live():
                    client = node.client()
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
                    info = client.info("replication")
                    if info["role"] == "slave" and info["master_link_status"] != "up":
                        return False
                    views.add(repr(sorted(client.execute_command("CLUSTER", "SLOTS"))))
                return len(views) == 1  # every node has heard of every change
            except redis.RedisError:
                return False

        wait_for(healthy, timeout)

    def flushall(self) -> None:
        for node in self.masters():
            node.client().flushall()

    def command_calls(self) -> dict[str, int]:
        """`INFO commandstats` of every master, added up."""
        total: dict[str, int] = {}
        for node in self.masters():
            for name, calls in node.command_calls().items():
                total[name] = total.get(name, 0) + calls
        return total


def _slot_ranges(node: RedisServer) -> list[tuple[int, int]]:
    line = next(
        line
        for line in node.client().execute_command("CLUSTER", "NODES").decode().splitlines()
        if "myself" in line
    )
    ranges = []
    for part in line.split()[8:]:
        if part.startswith("["):
            continue  # a slot being migrated
        start, _, end = part.partition("-")
        ranges.append((int(start), int(end or start)))
    return ranges


def _owns_slots(node: RedisServer) -> bool:
    return bool(_slot_ranges(node))


def token(subject: str, publish: Any = (), ttl: float = 3600) -> str:
    return mint(SECRET, subject, time.time(), ttl, publish)


def bearer(subject: str, publish: Any = (), ttl: float = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, publish, ttl)}"}


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll `condition` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def receive_json(ws: ClientWebSocketResponse, timeout: float = 10.0) -> Any:
    message = await ws.receive(timeout=timeout)
    assert message.type is WSMsgType.TEXT, f"expected a text frame, got {message}"
    return orjson.loads(message.data)


async def receive_text(ws: ClientWebSocketResponse, timeout: float = 10.0) -> str:
    message = await ws.receive(timeout=timeout)
    assert message.type is WSMsgType.TEXT, f"expected a text frame, got {message}"
    return str(message.data)


async def receive_events(
    ws: ClientWebSocketResponse, count: int, timeout: float = 10.0
) -> list[Any]:
    """The next `count` event frames; any control frame in between fails the test."""
    events = []
    for _ in range(count):
        frame = await receive_json(ws, timeout)
        assert "op" not in frame, f"expected an event frame, got {frame}"
        events.append(frame)
    return events


async def expect_silence(ws: ClientWebSocketResponse, seconds: float) -> None:
    """Nothing arrives for `seconds` (used only to prove an absence)."""
    try:
        message = await ws.receive(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {message}")


class Monitor:
    """Redis MONITOR on a raw connection: every command Redis runs, with its arguments."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[list[str]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        assert (await reader.readline()).startswith(b"+OK")
        self._task = asyncio.create_task(self._collect(reader))
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        assert self._writer is not None
        self._task.cancel()
        self._writer.close()

    async def _collect(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            # +1700000000.000000 [0 127.0.0.1:5555] "XREAD" "COUNT" "100" ...
            _, _, quoted = line.decode("utf-8", "replace").partition("] ")
            self.commands.append([part for part in quoted.strip().split('"') if part.strip()])

    def reads_of(self, prefix: str = "account:") -> list[str]:
        """The keys read by XREAD commands, in order (one item per key per command)."""
        return self.reads_of_commands(self.commands, prefix)

    @staticmethod
    def reads_of_commands(commands: list[list[str]], prefix: str = "account:") -> list[str]:
        keys = []
        for command in commands:
            if command and command[0].upper() == "XREAD":
                streams = command.index("STREAMS") if "STREAMS" in command else len(command)
                names = command[streams + 1 :]
                keys += [name for name in names[: len(names) // 2] if name.startswith(prefix)]
        return keys


def publish_many(
    redis_client: redis.Redis | redis.RedisCluster,
    account: str,
    payloads: list[Any],
    retention: int = 10_000,
) -> list[str]:
    """Publish through the hub's own script in one pipeline: stored, indexed, notified."""
    return publish_pairs(redis_client, [(account, p) for p in payloads], retention)


def publish_pairs(
    redis_client: redis.Redis | redis.RedisCluster,
    events: list[tuple[str, Any]],
    retention: int = 10_000,
) -> list[str]:
    """Publish (account, payload) pairs through the publish script in one transaction: the
    notifier sees them all in one batch (on a cluster: one pipeline, per shard)."""
    from hub.redis.store import PUBLISH_SCRIPT

    clustered = isinstance(redis_client, redis.RedisCluster)
    layout = CLUSTER_LAYOUT if clustered else SINGLE
    sha = redis_client.script_load(PUBLISH_SCRIPT)  # on a cluster: on every master
    pipe = redis_client.pipeline(transaction=not clustered)
    for account, payload in events:
        index = layout.index(layout.shard_of(account))
        pipe.execute_command(
            "EVALSHA",
            sha,
            3,
            layout.account_log(account),
            index,
            layout.account_epoch(account),
            account,
            "Bulk",
            orjson.dumps(payload),
            retention,
            100_000,
        )
    return [entry_id.decode() for entry_id in pipe.execute()]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


# A token (a JWT's header and claims), the cookie, a query string: never in a hub log line.
SECRET_IN_LOG = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+|hub_token=|\?[\w%.-]+=")
HUB_LOGS: list[Path] = []  # every HubProcess's log this run, scanned at its end (conftest)


def secrets_in_logs(paths: list[Path]) -> list[str]:
    """The lines of these logs that hold a token, the cookie or a query string."""
    return [
        f"{path.name}: {line[:200]}"
        for path in paths
        if path.exists()
        for line in path.read_text(errors="replace").splitlines()
        if SECRET_IN_LOG.search(line)
    ]


class HubProcess:
    """`python -m hub serve` on the embedded Redis, with its JSON log lines collected."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.port = int(env["HUB_PORT"])
        self.log = cwd / f"hub-{time.monotonic_ns()}.log"
        HUB_LOGS.append(self.log)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve"], env=env, cwd=cwd, stderr=log
            )
        wait_for(self.ready)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def request(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url(path), data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    async def restart(self) -> HubProcess:
        """Drain this one, then start the same command again (same port, same Redis)."""
        await self.drain()
        return await asyncio.to_thread(HubProcess, self.env, self.cwd)

    async def drain(self) -> None:
        """SIGTERM: the hub drains (1001 to every socket, a close event to every stream) and
        exits; waited for in a thread."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.process.wait, 30)

    def redis_pid(self) -> int:
        for line in self.log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "embedded_redis_started":
                return int(entry["pid"])
        raise AssertionError("no embedded_redis_started line")
