"""Real processes on loopback for the tools: a redis-server and a `hub serve`, each on a free
port, that a script can kill, pause, stop and start again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.05)


class RedisProcess:
    """A redis-server in `directory`: `persistence` is `always`, `everysec` (append-only
    file) or `none`; `extra` arguments (cluster mode, say). Started again on the same port and
    directory, it finds its data."""

    def __init__(
        self, directory: Path, persistence: str = "none", extra: tuple[str, ...] = ()
    ) -> None:
        self.directory, self.persistence, self.extra = directory, persistence, extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(port=self.port, socket_timeout=10)
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        appendonly = ["--appendonly", "no"]
        if self.persistence != "none":
            appendonly = ["--appendonly", "yes", "--appendfsync", self.persistence]
        # fmt: off
        self.process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory), "--maxclients", "20000", *appendonly, *self.extra,
            ],
            stdout=subprocess.DEVNULL,
        )
        # fmt: on
        _until(lambda: _answers(self.client), 20, "redis-server's start")

    def cpu_seconds(self) -> float:
        """The server's CPU time so far (user and system)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def calls(self) -> dict[str, int]:
        """`INFO commandstats` as {command: calls}."""
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def flush(self) -> None:
        """Empty, and its command counts back to zero."""
        self.client.flushall()
        self.client.config_resetstat()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
        self.process = None

    def signal(self, number: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, number)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class HubServer:
    """`python -m hub serve` against `redis_url`, its log in `log`."""

    def __init__(self, redis_url: str, secret: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))},
            "REDIS_URL": redis_url,
            "HUB_SECRET": secret,
            "HUB_PORT": str(self.port),
            "HUB_LOG_LEVEL": "warning",
            "HUB_MAX_ACCEPT_RATE": "0",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve"], env=self.env, stderr=log
            )
        _until(self._ready, 30, "the hub's start")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def drain(self) -> None:
        """SIGTERM: sockets closed with 1001 and their last ID, then the process exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None
