"""The default Redis: a `redis-server` the hub starts, supervises and stops itself.

It listens only on a unix socket under HUB_DATA_DIR (no TCP port to collide with or to
expose), keeps an append-only file fsynced every second, and dies with the hub even when the
hub is killed (Linux parent-death signal). A lock file keeps two hubs off one data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import IO

import redis.asyncio as aioredis
import structlog

from hub.core.errors import HubError
from hub.redis.store import REDIS_FAILURES

SOCKET_NAME = "redis.sock"
LOCK_NAME = "hub.lock"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1
_MAX_SOCKET_PATH = 107

log = structlog.get_logger(__name__)


def socket_path(data_dir: Path) -> Path:
    return data_dir.resolve() / SOCKET_NAME


def socket_url(data_dir: Path) -> str:
    return f"unix://{socket_path(data_dir)}"


def die_with_parent() -> None:
    """`preexec_fn` for children that must not outlive this process (Linux; else a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(self, data_dir: Path, binary: str = "redis-server") -> None:
        self.data_dir = data_dir.resolve()
        self._binary = binary
        self._process: asyncio.subprocess.Process | None = None
        self._lock: IO[str] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return socket_url(self.data_dir)

    async def start(self) -> None:
        binary = shutil.which(self._binary)
        if binary is None:
            raise HubError(
                f"{self._binary} not found: install it (apt-get install redis-server) "
                "or set REDIS_URL to use another Redis"
            )
        self._binary = binary
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if len(str(socket_path(self.data_dir))) > _MAX_SOCKET_PATH:
            raise HubError(f"HUB_DATA_DIR {self.data_dir} is too long for a unix socket path")
        self._take_lock()
        await self._spawn()

    def _take_lock(self) -> None:
        lock = (self.data_dir / LOCK_NAME).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise HubError(
                f"HUB_DATA_DIR {self.data_dir} is used by another hub process; give each hub "
                "its own data directory, or point them all at one Redis with REDIS_URL"
            ) from None
        self._lock = lock

    async def _spawn(self) -> None:
        # fmt: off
        args = [
            "--port", "0",
            "--unixsocket", str(socket_path(self.data_dir)), "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]
        # fmt: on
        self._process = await asyncio.create_subprocess_exec(
            self._binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Its own process group: Ctrl-C in a terminal signals the whole foreground group,
            # and Redis must stop when the hub has drained, not with it.
            start_new_session=True,
        )
        await self._wait_ready()
        log.info("embedded_redis_started", pid=self._process.pid, dir=str(self.data_dir))

    async def _wait_ready(self) -> None:
        assert self._process is not None
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self._process.returncode is not None:
                    raise HubError(
                        f"redis-server exited with {self._process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    )
                try:
                    # Loading a large AOF answers -LOADING until done.
                    if await client.ping():
                        return
                except REDIS_FAILURES:
                    pass
                if time.monotonic() > deadline:
                    raise HubError(f"redis-server did not answer within {START_TIMEOUT:.0f} s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def supervise(self) -> None:
        """Restart redis-server if it exits while the hub runs."""
        delay = 0.2
        while True:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("embedded_redis_exited", code=code, restart_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self._spawn()
                delay = 0.2
            except HubError as error:
                log.error("embedded_redis_restart_failed", error=str(error))

    async def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF), then SIGKILL if it lingers; release the lock."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
            log.info("embedded_redis_stopped", code=process.returncode)
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def require_running(data_dir: Path) -> str:
    """The URL of a running embedded Redis, for `hub publish`; a clear error otherwise."""
    path = socket_path(data_dir)
    if not path.exists():
        raise HubError(
            f"no embedded Redis at {path}: start `hub serve` first (it runs one under "
            "HUB_DATA_DIR), or set REDIS_URL"
        )
    return socket_url(data_dir)


__all__ = ["EmbeddedRedis", "require_running", "socket_url"]
