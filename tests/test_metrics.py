"""`/metrics` against known traffic: every count is the one the test caused."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hub.config import Settings
from hub.web.state import SESSIONS
from tests.support import RedisServer, bearer, receive_events, receive_json, wait_until
from tests.test_sse import open_stream
from tests.test_ws import connect, publish

Client = TestClient[Any, Any]


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


async def test_metrics_count_the_traffic_they_saw(client: Client) -> None:
    sessions = client.app[SESSIONS]
    publisher = await connect(client, "1", publish=["1"])
    reader = await connect(client, "1")
    stream, _ = await open_stream(client, "1")
    assert (await client.get("/sse/1")).status == 401  # refused: missing_token

    for n in range(3):
        await publish(client, "1", n)
    await publisher.send_str('{"op": "publish", "to": "1", "type": "T", "payload": 3, "ref": 1}')
    frames = [await receive_json(publisher) for _ in range(5)]  # its ack and 4 events
    assert [f.get("op") for f in frames].count("ack") == 1
    await receive_events(reader, 4)
    await stream.events(4)
    await reader.close()  # the client closes: 1000
    await wait_until(lambda: len(sessions) == 2, what="the closed socket to be counted")
    metrics = await scrape(client)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("hub_events_published_total", via="http") == 3
    assert value("hub_events_published_total", via="socket") == 1
    assert value("hub_publish_duration_seconds_count") == 4
    assert value("hub_sockets_opened_total", via="ws") == 2
    assert value("hub_sockets_opened_total", via="sse") == 1
    assert value("hub_sockets_open", via="ws") == 1
    assert value("hub_sockets_open", via="sse") == 1
    assert value("hub_sockets_closed_total", code="1000") == 1
    assert value("hub_handshakes_refused_total", reason="missing_token") == 1
    assert value("hub_events_delivered_total") == 12  # 4 events to each of 3 subscribers
    assert value("hub_delivery_lag_seconds_count") == 12
    assert value("hub_notifier_reads_total", shard="0") >= 1
    assert value("hub_stream_reads_total") >= 1
    assert not [key for key in metrics if key[0] == "hub_redis_errors_total"]


async def test_redis_failures_and_the_notifier_s_recovery_are_counted(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    client = await make_client(settings, redis_url=own_redis.url, block_ms=200)
    own_redis.stop()
    response = await client.post(
        "/accounts/1/events", json={"type": "T", "payload": 1}, headers=bearer("svc", "*")
    )
    assert response.status == 503
    own_redis.start()
    await publish(client, "1", "after")  # through once Redis is back

    async def recovered() -> bool:
        return (await scrape(client)).get(("hub_notifier_recoveries_total", ()), 0) >= 1

    await wait_until(recovered, 20, "the notifier's recovery")
    metrics = await scrape(client)
    assert metrics[("hub_redis_errors_total", (("where", "publish"),))] == 1
    assert metrics[("hub_redis_errors_total", (("where", "notifier"),))] >= 1
    assert metrics[("hub_events_published_total", (("via", "http"),))] == 1


def test_workers_numbers_add_up_and_a_dead_one_s_gauges_do_not() -> None:
    from collections import Counter

    import orjson

    from hub.core.stats import Gauges, Stats, add_snapshot, snapshot

    worker = Stats()
    worker.published["http"] += 3
    worker.deliver(5, 0.002, worker.delivery_lag.slot(0.002))
    worker.redis_errors["read"] += 1
    held = Gauges(Counter({"ws": 4}), queued_replies=2)
    data = orjson.loads(orjson.dumps(snapshot(worker, held)))  # as written to its file

    total, gauges = Stats(), Gauges()
    add_snapshot(total, gauges, data)  # alive
    add_snapshot(total, None, data)  # the same numbers from a worker that died
    assert total.published == Counter({"http": 6})
    assert (total.delivered, total.delivery_lag.count) == (10, 10)
    assert total.delivery_lag.sum == pytest.approx(0.02)
    assert total.redis_errors == Counter({"read": 2})
    assert (gauges.open, gauges.queued_replies) == (Counter({"ws": 4}), 2)


def test_close_codes_a_client_makes_up_are_one_label_value() -> None:
    from hub.web.subscriptions import close_label

    assert [close_label(c) for c in (1000, 1001, 1006, 4008, 4429, None)] == [
        "1000",
        "1001",
        "1006",
        "4008",
        "4429",
        "none",
    ]
    assert {close_label(c) for c in range(3000, 5000)} - {"4001", "4008", "4009"} <= {
        "other",
        "4400",
        "4401",
        "4403",
        "4429",
    }
