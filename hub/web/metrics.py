"""`GET /metrics`: the process's counts (hub/core/stats.py) and gauges read from its state, in the
Prometheus text format through `prometheus-client`, built when scraped (nothing on the hot path).

With several workers (hub/supervisor.py) any worker answers for all of them: each writes its
numbers to a shared directory every second (`SharedMetrics`), and a scrape adds them up, the
counts of workers that died included (totals never go back), the gauges of live ones only.

Keep it private: the shipped nginx config does not route it (deploy/nginx.conf).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hub.core.stats import Gauges, Histogram, Stats
from hub.engine.session import Session
from hub.web.state import SESSIONS, SHARED_METRICS, STATS

routes = web.RouteTableDef()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def gauges_of(sessions: set[Session]) -> Gauges:
    gauges = Gauges(Counter({"ws": 0, "sse": 0}))
    for session in sessions:
        gauges.open[session.via] += 1
        gauges.queued_replies += session.queued_replies
    return gauges


class HubCollector(Collector):
    """The metrics of the hub, from its counts and gauges."""

    def __init__(self, stats: Stats, gauges: Gauges) -> None:
        self._stats, self._gauges = stats, gauges

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _labelled(
            GaugeMetricFamily, "hub_sockets_open", "Open subscriptions", "via", self._gauges.open
        )
        yield _labelled(
            CounterMetricFamily,
            "hub_sockets_opened",
            "Subscriptions opened (WebSockets and event streams)",
            "via",
            stats.opened,
        )
        yield _labelled(
            CounterMetricFamily,
            "hub_sockets_closed",
            "Subscriptions closed, by the close code the client got (none: an event stream"
            " whose client left)",
            "code",
            stats.closed,
        )
        yield _labelled(
            CounterMetricFamily,
            "hub_handshakes_refused",
            "Subscriptions refused before they opened, by error code",
            "reason",
            stats.refused,
        )
        yield _labelled(
            CounterMetricFamily, "hub_events_published", "Events stored", "via", stats.published
        )
        yield CounterMetricFamily(
            "hub_publishes_rate_limited",
            "Socket publishes refused by HUB_PUBLISH_RATE",
            value=stats.rate_limited,
        )
        yield CounterMetricFamily(
            "hub_events_delivered", "Events written to clients", value=stats.delivered
        )
        yield CounterMetricFamily(
            "hub_stream_reads", "Reads of account streams (positions)", value=stats.stream_reads
        )
        yield _labelled(
            CounterMetricFamily,
            "hub_notifier_reads",
            "Reads of the index by the notifiers, by index shard (0 on a single Redis node)",
            "shard",
            stats.notifier_reads,
        )
        yield CounterMetricFamily(
            "hub_notifier_recoveries",
            "Times the notifier read again after losing Redis (every session then rechecks)",
            value=stats.notifier_recoveries,
        )
        yield CounterMetricFamily(
            "hub_publishes_unreplicated",
            "Publishes acknowledged without WAIT: the cluster shard had no replica left",
            value=stats.unreplicated,
        )
        yield CounterMetricFamily(
            "hub_index_shard_moves",
            "Times an index shard was found served by another Redis node (a failover or a slot"
            " move): its accounts' sessions then recheck their positions",
            value=stats.shard_moves,
        )
        yield _labelled(
            CounterMetricFamily,
            "hub_redis_errors",
            "Redis commands that failed, by where",
            "where",
            stats.redis_errors,
        )
        yield GaugeMetricFamily(
            "hub_replies_queued",
            "Socket replies waiting to be written",
            value=self._gauges.queued_replies,
        )
        yield _histogram(
            "hub_publish_duration_seconds", "Time to store a publish", stats.publish_seconds
        )
        yield _histogram(
            "hub_delivery_lag_seconds",
            "From an event's stream ID time to its write to a client (a batch written at once"
            " counts each event with the lag of its oldest)",
            stats.delivery_lag,
        )
        yield _histogram(
            "hub_notifier_batch_events",
            "Index entries per notifier read",
            stats.notifier_batch,
        )


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: dict[str, int],
) -> Metric:
    family = kind(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    return HistogramMetricFamily(
        name, documentation, buckets=histogram.cumulative(), sum_value=histogram.sum
    )


def exposition(stats: Stats, gauges: Gauges) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(stats, gauges))
    return generate_latest(registry)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The metrics of this `hub serve` (all its workers), kept private: deploy/nginx.conf
    does not route it."""
    stats, gauges = request.app[STATS], gauges_of(request.app[SESSIONS])
    shared = request.app.get(SHARED_METRICS)
    if shared is not None:
        stats, gauges = shared.totals(stats, gauges)
    body = exposition(stats, gauges)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
