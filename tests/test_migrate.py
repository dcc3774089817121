"""`hub migrate`: a single node's deployment, published to while it is copied, ends up
identical in a Redis Cluster, and clients resuming there with their old position miss nothing."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from hub.config import Settings
from hub.core.keys import SINGLE, parse_single
from tests.support import RedisCluster, RedisServer, bearer, receive_events, receive_json

pytestmark = pytest.mark.cluster


async def _hub_migrate(source: str, target: str, cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "hub", "migrate", "--from", source, "--to", target),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _stream(client: Any, name: str) -> tuple[list[Any], tuple[Any, ...]]:
    info = client.xinfo_stream(name)
    head = (info["last-generated-id"], info["entries-added"], info["max-deleted-entry-id"])
    return client.xrange(name), head


def _assert_identical(source: redis.Redis, target: redis.RedisCluster) -> int:
    """Every account key and email reservation of `source` is in `target`, the same."""
    layout = RedisCluster.layout
    compared = 0
    for raw in source.scan_iter(match="*"):
        name = raw.decode()
        key = parse_single(name)
        if key is None:
            if name.startswith("email:") or name == "account_id":
                assert target.get(name) == source.get(name), name
            continue
        moved = key.on(layout)
        if key.kind == "log":
            assert _stream(target, moved) == _stream(source, name), name
        else:
            assert target.get(moved) == source.get(name), name
            if key.kind == "idempotency":
                assert target.pttl(moved) > 0
        compared += 1
    return compared


async def test_a_deployment_copied_under_publishing_is_identical_and_clients_resume_on_it(  # noqa: PLR0915
    cluster_redis: RedisCluster,
    own_redis: RedisServer,
    make_client: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    cluster_redis.flushall()
    old = await make_client(settings, redis_url=own_redis.url, retention=20)
    admin = bearer("svc", "*")
    for n in range(3):
        created = await old.post("/accounts", json={"email": f"user{n}@example.com"}, headers=admin)
        assert created.status == 201
    keyed = {**admin, "Idempotency-Key": "order-1"}
    assert (await old.post("/accounts/a/events", json={"type": "K"}, headers=keyed)).status == 201
    for n in range(50):  # "t" keeps 20 of 50: trimmed, which must stay told apart from lost
        await old.post("/accounts/t/events", json={"type": "T", "payload": n}, headers=admin)
    ws = await old.ws_connect("/ws/a", headers=bearer("a"))
    epoch = (await receive_json(ws))["epoch"]
    seen = [(await receive_events(ws, 1))[0]["id"]]  # the keyed event

    stop = asyncio.Event()

    async def publish_meanwhile() -> int:
        count = 0
        while not stop.is_set():
            # "a" gets 10 of them (within the retention of 20), the others get the rest.
            account = ("a", "b", "1", "2")[count % 4] if count < 40 else ("b", "1")[count % 2]
            response = await old.post(
                f"/accounts/{account}/events",
                json={"type": "Live", "payload": count},
                headers=admin,
            )
            assert response.status == 201
            count += 1
        return count

    publisher = asyncio.create_task(publish_meanwhile())
    first = await _hub_migrate(own_redis.url, cluster_redis.url, tmp_path)
    assert first[0] == 0, first[2]
    seen += [e["id"] for e in await receive_events(ws, 3)]  # the client got a few more
    stop.set()
    published = await publisher
    assert published > 0
    await ws.close()
    await old.close()  # the cut-over: the old hubs stop, the last events are copied

    second = await _hub_migrate(own_redis.url, cluster_redis.url, tmp_path)
    assert second[0] == 0, second[2]
    assert re.search(r": [1-9][\d,]* events copied", second[1]), second[1]  # the tail, live
    assert "accounts" in second[2]  # the progress
    compared = _assert_identical(own_redis.client(), cluster_redis.client())
    assert compared == 2 * 6 + 1  # the streams and epochs of 1, 2, 3, a, b, t; a's key

    again = await _hub_migrate(own_redis.url, cluster_redis.url, tmp_path)
    assert again[0] == 0, again[2]
    assert " 0 events copied" in again[1], again[1]  # harmless once done

    new = await make_client(settings, redis_url=cluster_redis.url)
    resumed = await new.ws_connect(f"/ws/a?last_id={seen[-1]}&epoch={epoch}", headers=bearer("a"))
    welcome = await receive_json(resumed)
    assert welcome["recovered"] is True
    stored = own_redis.client().xrange(SINGLE.account_log("a"))
    rest = [entry_id.decode() for entry_id, _ in stored][len(seen) :]
    assert [e["id"] for e in await receive_events(resumed, len(rest))] == rest
    trimmed = own_redis.client().xrange(SINGLE.account_log("t"))
    first_kept = trimmed[0][0].decode()
    lagged = await new.ws_connect("/ws/t?last_id=0-1", headers=bearer("t"))
    assert (await receive_json(lagged))["recovered"] is False  # trimmed, as on the old node
    kept = await new.ws_connect(f"/ws/t?last_id={first_kept}", headers=bearer("t"))
    assert (await receive_json(kept))["recovered"] is True
    replay = await new.post("/accounts/a/events", json={"type": "K"}, headers=keyed)
    assert replay.status == 200  # the idempotency key came along

    # After the cut-over: "b" gets an event on the cluster, and a late one on the old node.
    # Running the migration again must not merge the two histories, nor fail for good.
    on_cluster = await new.post("/accounts/b/events", json={"type": "New"}, headers=admin)
    assert on_cluster.status == 201
    cluster_b = cluster_redis.client().xrange(RedisCluster.layout.account_log("b"))
    own_redis.client().xadd(SINGLE.account_log("b"), {"type": "Late", "payload": "1"})
    late = await _hub_migrate(own_redis.url, cluster_redis.url, tmp_path)
    assert late[0] == 0, late[2]
    assert "1 accounts left as they are" in late[1]
    assert ": b" in late[1]
    assert cluster_redis.client().xrange(RedisCluster.layout.account_log("b")) == cluster_b
