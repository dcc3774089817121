"""`hub serve --workers N`: one supervisor, N worker processes serving one port.

Each worker is a whole hub (`hub serve`, with its own notifier) listening on the same port with
SO_REUSEPORT: the kernel spreads new connections over them. Processes share nothing but Redis,
as separate hubs behind a proxy do, so the guarantees are the same. The supervisor serves
nothing itself: it owns the embedded Redis (without REDIS_URL), the directory where the
workers add up their metrics, restarts a worker that dies (its clients reconnect to the others
and resume from their last ID: nothing is lost), and on SIGTERM or SIGINT drains them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from hub.aio import StopSignals
from hub.config import Settings
from hub.core.errors import HubError
from hub.redis.embedded import EmbeddedRedis, die_with_parent

log = structlog.get_logger(__name__)

WORKER_ENV = "HUB_WORKER"  # set for a worker: its index (0, 1, ...)
METRICS_ENV = "HUB_METRICS_DIR"  # set for a worker: where the workers add up their metrics
STOP_TIMEOUT = 30.0  # a worker's drain takes ~10 s; past this it is killed
STARTUP = 5.0  # a worker failing this soon after its first start is a start failure
STEADY = 30.0  # a worker that ran this long restarts quickly again if it dies


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, when the port cannot be served: each worker would fail alike.
    Without SO_REUSEPORT, so that another hub's workers on the port count as taking it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise HubError(f"cannot listen on {host}:{port}: {reason}") from None


class Supervisor:
    """Start, watch, restart and stop the workers of one port."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()  # set once the workers are being stopped
        self._env: dict[str, str] = {}

    async def run(self) -> int:
        """Serve until SIGINT or SIGTERM; the signal's number. A start failure raises."""
        settings = self._settings
        signals = StopSignals()
        _check_port(settings.host, settings.port)
        metrics = Path(tempfile.mkdtemp(prefix="hub-metrics-"))
        redis = EmbeddedRedis(settings.data_dir) if settings.redis_url is None else None
        tasks: list[asyncio.Task[Any]] = []
        try:
            if redis is not None:
                await redis.start()
                tasks.append(asyncio.create_task(redis.supervise(), name="embedded-redis"))
            self._env = {
                **os.environ,
                "REDIS_URL": redis.url if redis is not None else str(settings.redis_url),
                "HUB_HOST": settings.host,
                "HUB_PORT": str(settings.port),
                "HUB_WORKERS": "1",
                METRICS_ENV: str(metrics),
            }
            watchers = [
                asyncio.create_task(self._keep(index), name=f"worker-{index}")
                for index in range(settings.workers)
            ]
            tasks += watchers
            log.info("supervisor_started", workers=settings.workers, port=settings.port)
            stopped = asyncio.create_task(signals.wait())
            tasks.append(stopped)
            done, _ = await asyncio.wait({stopped, *watchers}, return_when="FIRST_COMPLETED")
            for task in done - {stopped}:
                task.result()  # a worker that could not start: HubError
            received: int = stopped.result()
            log.info("supervisor_stopping", signal=signal.Signals(received).name)
            return received
        finally:
            await self._stop_all()  # every worker drains
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if redis is not None:
                await redis.stop()
            shutil.rmtree(metrics, ignore_errors=True)

    async def _keep(self, index: int) -> None:
        """Run worker `index`, again whenever it dies; raise if its first start fails."""
        delay, first = 0.5, True
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hub",
                "serve",
                env={**self._env, WORKER_ENV: str(index)},
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                # Out of the terminal's foreground group: a Ctrl-C reaches the supervisor
                # alone, which stops the workers itself (and does not take their exit for a
                # crash to restart).
                start_new_session=True,
            )
            self._processes[index] = process
            if self._stopping.is_set():  # started while the others were being stopped
                process.terminate()
            log.info("worker_started", worker=index, pid=process.pid)
            code = await process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            if first and ran < STARTUP and code == 2:
                # It said why on stderr (one line): a busy port, a bad setting.
                raise HubError(f"worker {index} could not start (exit status {code})")
            first = False
            if ran > STEADY:
                delay = 0.5
            log.error("worker_exited", worker=index, pid=process.pid, code=code, restart_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)  # it keeps dying: wait longer each time

    async def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then wait; kill those that linger."""
        self._stopping.set()
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        waits = [asyncio.ensure_future(process.wait()) for process in running]
        if waits:
            await asyncio.wait(waits, timeout=STOP_TIMEOUT)  # one deadline for all of them
        for process in running:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for wait in waits:
            wait.cancel()
