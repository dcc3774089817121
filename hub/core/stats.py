"""What the hub counts, as plain numbers. Pure: no I/O, no metrics library.

The hot path pays an addition (a delivery is counted once per write, however many events it
carries); hub/web/metrics.py turns these into Prometheus metrics when `/metrics` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Seconds. Delivery lag spans a live socket (ms) to a client catching up on a backlog (min).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Histogram:
    """Counts per bucket (`value <= bound`), with a weight: a batch of events written at once
    counts each of them."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, weight: int = 1) -> None:
        self.add(self.slot(value), value, weight)

    def slot(self, value: float) -> int:
        """The bucket `value` falls in (for `add`, when one value is added many times)."""
        return bisect_left(self.bounds, value)

    def add(self, slot: int, value: float, weight: int) -> None:
        self.counts[slot] += weight
        self.sum += value * weight
        self.count += weight

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le`, observations at or below it) per bucket, `+Inf` last: Prometheus's form."""
        running, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass(slots=True)
class Stats:
    """One process's counts since it started."""

    opened: Counter[str] = field(default_factory=Counter)  # subscriptions, by `via`
    closed: Counter[str] = field(default_factory=Counter)  # by the close code the client got
    refused: Counter[str] = field(default_factory=Counter)  # handshakes, by error code
    published: Counter[str] = field(default_factory=Counter)  # by `via`: http, socket
    rate_limited: int = 0  # socket publishes refused by HUB_PUBLISH_RATE
    delivered: int = 0  # events written to clients
    stream_reads: int = 0  # positions read from account streams
    notifier_reads: Counter[str] = field(default_factory=Counter)  # by index shard
    notifier_recoveries: int = 0  # the notifier read again after losing Redis
    unreplicated: int = 0  # publishes acknowledged by a cluster shard that had no replica
    shard_moves: int = 0  # an index shard found served by another node (failover, slot move)
    redis_errors: Counter[str] = field(default_factory=Counter)  # by where they were met
    publish_seconds: Histogram = field(default_factory=lambda: Histogram(PUBLISH_BUCKETS))
    delivery_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    notifier_batch: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))

    def deliver(self, events: int, lag: float, slot: int) -> None:
        """`events` written to one client at once, the oldest `lag` seconds after it was
        published (in bucket `slot` of `delivery_lag`, found once for every client the batch
        reaches): each counts with that lag, an upper bound for the others."""
        self.delivered += events
        self.delivery_lag.add(slot, lag, events)


@dataclass(slots=True)
class Gauges:
    """What one process holds right now (not counted up: summed over live processes only)."""

    open: Counter[str] = field(default_factory=Counter)  # subscriptions, by `via`
    queued_replies: int = 0

    def add(self, other: Gauges) -> None:
        self.open.update(other.open)
        self.queued_replies += other.queued_replies


_COUNTERS = ("opened", "closed", "refused", "published", "redis_errors", "notifier_reads")
_TOTALS = (
    "rate_limited",
    "delivered",
    "stream_reads",
    "notifier_recoveries",
    "unreplicated",
    "shard_moves",
)
_HISTOGRAMS = ("publish_seconds", "delivery_lag", "notifier_batch")


def snapshot(stats: Stats, gauges: Gauges) -> dict[str, object]:
    """A process's numbers as JSON-ready data, for the others to add up (hub/web/metrics.py)."""
    data: dict[str, object] = {name: dict(getattr(stats, name)) for name in _COUNTERS}
    data |= {name: getattr(stats, name) for name in _TOTALS}
    for name in _HISTOGRAMS:
        histogram: Histogram = getattr(stats, name)
        data[name] = {"counts": histogram.counts, "sum": histogram.sum, "count": histogram.count}
    data["gauges"] = {"open": dict(gauges.open), "queued_replies": gauges.queued_replies}
    return data


def add_snapshot(stats: Stats, gauges: Gauges | None, data: dict[str, Any]) -> None:
    """Add another process's `snapshot` to these numbers; its gauges only when given (the
    process is alive: a dead one's counts still count, what it held does not)."""
    for name in _COUNTERS:
        getattr(stats, name).update(data[name])
    for name in _TOTALS:
        setattr(stats, name, getattr(stats, name) + data[name])
    for name in _HISTOGRAMS:
        histogram: Histogram = getattr(stats, name)
        for index, count in enumerate(data[name]["counts"]):
            histogram.counts[index] += count
        histogram.sum += data[name]["sum"]
        histogram.count += data[name]["count"]
    if gauges is not None:
        gauges.add(Gauges(Counter(data["gauges"]["open"]), data["gauges"]["queued_replies"]))
