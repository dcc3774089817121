"""The numbers of every worker serving one port (hub/supervisor.py), added up for `/metrics`.

Each worker writes its own to a directory the supervisor made, every second and as it stops;
any worker adds them all up when scraped: the counts of workers that died included (totals
never go back), the gauges of live ones only. At most a second old for the other workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from hub.core.stats import Gauges, Stats, add_snapshot, snapshot

WRITE_EVERY = 1.0  # seconds


class SharedMetrics:
    """The numbers of every worker on one port: each writes its own to `directory` (as
    `<pid>.json`, replaced atomically), and any of them adds them all up when scraped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._own = directory / f"{os.getpid()}.json"

    def write(self, stats: Stats, gauges: Gauges) -> None:
        partial = self._own.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(snapshot(stats, gauges)))
        partial.replace(self._own)

    def totals(self, stats: Stats, gauges: Gauges) -> tuple[Stats, Gauges]:
        """This process's live numbers plus the others' last written ones."""
        total, total_gauges = Stats(), Gauges()
        add_snapshot(total, total_gauges, snapshot(stats, gauges))
        for path in self.directory.glob("*.json"):
            if path == self._own:
                continue
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # being replaced, or gone: the next scrape has it
            add_snapshot(total, total_gauges if _alive(int(path.stem)) else None, data)
        return total, total_gauges


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
