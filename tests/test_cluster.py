"""The hub on a real Redis Cluster (3 masters, 3 replicas) that tests break: a master killed
under publishing (with its replica in sync, or cut off just before), a slot move under load,
the spread of work over the masters, replicas' confirmations, a layout mismatch."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub.client import HubClient
from hub.config import Settings
from hub.web.state import STATS
from tests.support import (
    REDIS_CLI,
    RedisCluster,
    _slot_ranges,
    bearer,
    free_port,
    token,
    wait_until,
)
from tests.test_cli import hub_command

pytestmark = pytest.mark.cluster

Client = TestClient[Any, Any]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test alone, for tests that kill, pause or reshard it."""
    own = RedisCluster(tmp_path / "cluster")
    own.start()
    yield own
    for node in own.nodes:
        if node.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGCONT)
    own.stop()


@dataclass
class Watcher:
    """One account's resuming client: what it got, in order, and where it was told to
    resync (`None` in `seen`)."""

    client: HubClient
    seen: list[str | None] = field(default_factory=list)

    def events(self) -> list[str]:
        return [event for event in self.seen if event is not None]


@dataclass
class Publisher:
    """Publishes over HTTP with idempotency keys, retrying each event until the hub
    acknowledges it (201 or 200): `acked` per account (several publishers: in no order)."""

    client: Client
    accounts: list[str]
    acked: dict[str, list[str]] = field(default_factory=dict)
    outcomes: dict[int, int] = field(default_factory=dict)  # HTTP status → count
    stopping: bool = False

    @property
    def total(self) -> int:
        return sum(map(len, self.acked.values()))

    async def run(self, name: str) -> None:
        n = 0
        while not self.stopping:
            account = self.accounts[n % len(self.accounts)]
            headers = {**bearer("producer", "*"), "Idempotency-Key": f"{name}-{n}"}
            while True:  # until acknowledged: a retry with the key is safe
                try:
                    response = await self.client.post(
                        f"/accounts/{account}/events",
                        json={"type": "T", "payload": n},
                        headers=headers,
                    )
                    status = response.status
                    body = await response.json()
                except (TimeoutError, OSError):
                    status, body = 0, {}
                self.outcomes[status] = self.outcomes.get(status, 0) + 1
                if status in (200, 201):
                    self.acked.setdefault(account, []).append(body["id"])
                    break
                assert status in (503, 504), (status, body)
                await asyncio.sleep(0.05)  # pacing of the retries, not a synchronisation
            n += 1


async def _watch(client: Client, accounts: list[str]) -> dict[str, Watcher]:
    watchers = {}
    for account in accounts:
        url = str(client.make_url(f"/ws/{account}")).replace("http", "ws", 1)
        watcher = Watcher(HubClient(url, token=token(account)))
        watcher.client._on_reset = lambda _, w=watcher: w.seen.append(None)
        watchers[account] = watcher
    for watcher in watchers.values():
        await watcher.client.__aenter__()
        asyncio.get_running_loop().create_task(_collect(watcher))
    for watcher in watchers.values():
        await wait_until(lambda w=watcher: w.client.state == "open", what="the sockets")
    return watchers


async def _collect(watcher: Watcher) -> None:
    with contextlib.suppress(Exception):
        async for event in watcher.client:
            watcher.seen.append(event.id)


async def _history(client: Client, account: str) -> list[str]:
    response = await client.get(
        f"/accounts/{account}/events?limit=1000", headers=bearer("producer", "*")
    )
    assert response.status == 200
    return [event["id"] for event in (await response.json())["events"]]


async def _check_delivery(
    client: Client,
    publisher: Publisher,
    watchers: dict[str, Watcher],
    *,
    resets: bool,
    losses: bool = False,
) -> None:
    """Every acknowledged event is stored once and reached its watcher once, in order; an
    event a watcher got that is no longer stored was followed by a resync. With `losses`,
    acknowledged events may be gone (a shard written without a replica)."""
    for account, acked in publisher.acked.items():
        stored = await _history(client, account)
        assert len(set(stored)) == len(stored), f"{account}: stored twice"
        lost = set(acked) - set(stored)
        assert losses or not lost, f"{account}: acknowledged, then lost: {sorted(lost)}"
        watcher = watchers[account]
        await wait_until(
            lambda w=watcher, a=set(acked) - lost: a <= set(w.events()), timeout=30, what=account
        )
        got = watcher.events()
        assert got == sorted(set(got), key=_key), f"{account}: duplicated or reordered"
        kept = set(stored)
        for n, event_id in enumerate(watcher.seen):
            if event_id is not None and event_id not in kept:
                assert None in watcher.seen[n + 1 :], f"{account}: {event_id} lost silently"
        if not resets:
            assert None not in watcher.seen, f"{account} was told to resync"


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


async def _close(watchers: dict[str, Watcher]) -> None:
    for watcher in watchers.values():
        await watcher.client.close()


def _accounts_on(cluster: RedisCluster, master: Any, count: int, prefix: str) -> list[str]:
    """`count` account IDs whose shard the given master serves."""
    layout = cluster.layout
    found: list[str] = []
    n = 0
    while len(found) < count:
        account = f"{prefix}{n}"
        if cluster.master_of(layout.index(layout.shard_of(account))) is master:
            found.append(account)
        n += 1
    return found


async def _under_load(
    client: Client,
    accounts: list[str],
    disrupt: Callable[[Publisher], Awaitable[None]],
    *,
    resets: bool,
    losses: bool = False,
) -> dict[str, Watcher]:
    """A client per account and two publishers; `disrupt` once events flow; then more
    events, and the check that nothing acknowledged was lost, duplicated or reordered."""
    watchers = await _watch(client, accounts)
    try:
        publisher = Publisher(client, accounts)
        tasks = [asyncio.create_task(publisher.run(f"p{n}")) for n in range(2)]
        try:
            await wait_until(lambda: publisher.total >= 60, timeout=30, what="a first flow")
            await disrupt(publisher)
            after = publisher.total
            await wait_until(lambda: publisher.total >= after + 60, timeout=60, what="a flow after")
        finally:
            publisher.stopping = True
            await asyncio.gather(*tasks)
        await _check_delivery(client, publisher, watchers, resets=resets, losses=losses)
    finally:
        await _close(watchers)
    return watchers


@pytest.mark.parametrize("replica_state", ["in-sync", "paused", "gone"])
async def test_a_master_killed_under_publishing_loses_no_acknowledged_event(
    cluster: RedisCluster, make_client: Any, settings: Settings, replica_state: str
) -> None:
    """kill -9 of a master while events flow to its shards and others. Every acknowledged
    event survives the failover and reaches its client once, in order.

    `paused`: the replica is cut off (SIGSTOP) just before: the master's writes are not
    confirmed, so they are answered 504, never acknowledged. `gone`: the master has also
    dropped the replica's link, so its shards have no replica left: writes are acknowledged
    without waiting (counted), and those the failover loses end in a resync, never a gap.
    """
    client = await make_client(settings, redis_url=cluster.url, wait_timeout_ms=300)
    victim = cluster.masters()[0]
    replica = cluster.replica_of(victim)
    assert replica.process is not None
    accounts = _accounts_on(cluster, victim, 6, "v") + [
        a for m in cluster.masters()[1:] for a in _accounts_on(cluster, m, 2, f"o{m.port}-")
    ]
    stats = client.app[STATS]

    async def kill(publisher: Publisher) -> None:
        assert replica.process is not None
        if replica_state != "in-sync":
            os.kill(replica.process.pid, signal.SIGSTOP)
            await wait_until(
                lambda: publisher.outcomes.get(504, 0) >= 3, timeout=30, what="unconfirmed writes"
            )
        if replica_state == "gone":
            victim.client().client_kill_filter(_type="replica")
            unreplicated = stats.unreplicated
            await wait_until(
                lambda: stats.unreplicated >= unreplicated + 20,
                timeout=30,
                what="writes without a replica",
            )
        victim.kill()
        if replica_state != "in-sync":
            os.kill(replica.process.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_healthy, 60)

    lossy = replica_state == "gone"
    watchers = await _under_load(client, accounts, kill, resets=lossy, losses=lossy)
    if lossy:  # writes the replica never got were seen by clients, then lost: and said so
        assert any(None in watcher.seen for watcher in watchers.values())


async def test_a_slot_move_under_load_loses_duplicates_and_reorders_nothing(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """`redis-cli --cluster reshard` moves every slot of one master (index shards and
    accounts' keys with them) to another while events flow and sockets listen."""
    client = await make_client(settings, redis_url=cluster.url)
    source, target = cluster.masters()[:2]
    accounts = _accounts_on(cluster, source, 8, "m") + _accounts_on(cluster, target, 2, "t")

    moved = {
        shard
        for shard in cluster.layout.index_shards()
        if cluster.master_of(cluster.layout.index(shard)) is source
    }

    async def move(_: Publisher) -> None:
        slots = sum(end - start + 1 for start, end in _slot_ranges(source))
        await asyncio.to_thread(_reshard, source, target, slots)
        assert not _slot_ranges(source)

    await _under_load(client, accounts, move, resets=False)
    # Each moved shard's notifier notices (after its next read, within a BLOCK) and has its
    # sessions recheck their positions (a node taking a shard over may lack what was read).
    assert moved
    stats = client.app[STATS]
    await wait_until(lambda: stats.shard_moves >= len(moved), timeout=15, what="the moves")


def _reshard(source: Any, target: Any, slots: int) -> None:
    ids = [node.client().execute_command("CLUSTER", "MYID").decode() for node in (source, target)]
    subprocess.run(
        [
            *(str(REDIS_CLI), "--cluster", "reshard", f"127.0.0.1:{source.port}"),
            *("--cluster-from", ids[0], "--cluster-to", ids[1], "--cluster-slots", str(slots)),
            *("--cluster-yes", "--cluster-pipeline", "100"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


async def test_events_over_many_accounts_spread_over_every_master(
    cluster_redis: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """Every master serves index reads, and none more than twice its share of publishes."""
    cluster_redis.flushall()
    client = await make_client(settings, redis_url=cluster_redis.url)
    masters = cluster_redis.masters()
    before = {m.port: m.command_calls() for m in masters}
    for n in range(600):
        response = await client.post(
            f"/accounts/spread{n}/events", json={"type": "T"}, headers=bearer("p", "*")
        )
        assert response.status == 201
    after = {m.port: m.command_calls() for m in masters}
    publishes = {p: after[p].get("evalsha", 0) - before[p].get("evalsha", 0) for p in after}
    reads = {p: after[p].get("xread", 0) - before[p].get("xread", 0) for p in after}
    assert all(reads.values()), reads
    fair = 600 / len(masters)
    assert max(publishes.values()) <= 2 * fair, publishes
    assert sum(publishes.values()) >= 600, publishes


async def test_a_publish_whose_replica_does_not_confirm_is_answered_504_also_when_retried(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """WAIT: with the shard's replica paused, the event is stored on the master but not
    confirmed: 504 `outcome_unknown`. A retry with the same key replays the first event, and
    must wait for that event's replication too, not answer 200 at once."""
    client = await make_client(settings, redis_url=cluster.url, wait_timeout_ms=200)
    layout = cluster.layout
    account = "w1"
    master = cluster.master_of(layout.index(layout.shard_of(account)))
    replica = cluster.replica_of(master)
    headers = {**bearer("p", "*"), "Idempotency-Key": "once"}
    url = f"/accounts/{account}/events"
    first = await client.post(url, json={"type": "A"}, headers=bearer("p", "*"))
    assert first.status == 201  # in sync: confirmed
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        first_try = await client.post(url, json={"type": "B"}, headers=headers)
        assert (first_try.status, (await first_try.json())["error"]) == (504, "outcome_unknown")
        # Retries at once: on other pooled connections too, which wrote nothing themselves.
        retries = await asyncio.gather(
            *(client.post(url, json={"type": "B"}, headers=headers) for _ in range(4))
        )
        assert [r.status for r in retries] == [504] * 4
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    confirmed = await client.post(
        f"/accounts/{account}/events", json={"type": "B"}, headers=headers
    )
    assert confirmed.status == 200  # the first attempt's event, now confirmed
    assert len(await _history(client, account)) == 2


async def test_a_shard_without_replica_is_written_without_waiting_and_counted(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    client = await make_client(settings, redis_url=cluster.url, wait_timeout_ms=5000)
    layout = cluster.layout
    account = "solo"
    master = cluster.master_of(layout.index(layout.shard_of(account)))
    cluster.replica_of(master).kill()
    stats = client.app[STATS]

    async def published_at_once() -> bool:
        response = await client.post(
            f"/accounts/{account}/events", json={"type": "T"}, headers=bearer("p", "*")
        )
        return response.status == 201 and stats.unreplicated > 0

    await wait_until(published_at_once, timeout=30, what="a publish without a replica")
    text = await (await client.get("/metrics")).text()
    assert "hub_publishes_unreplicated_total" in text


def test_a_hub_configured_with_other_shards_refuses_to_start_in_one_line(
    cluster_redis: RedisCluster, tmp_path: Path
) -> None:
    """Data written with 16 index shards, a hub configured with 8: every account would be
    looked for under another hash tag, so the start says so instead."""
    cluster_redis.flushall()
    cluster_redis.client().set("hub:layout", "shards=16")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    env |= {"HUB_AUTH": "off", "HUB_PORT": str(free_port()), "HUB_DATA_DIR": str(tmp_path)}
    env |= {"REDIS_URL": cluster_redis.url, "HUB_INDEX_SHARDS": "8"}
    result = hub_command("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        "hub: error: this cluster holds data written with shards=16, the hub is configured "
        "with shards=8 (HUB_INDEX_SHARDS)"
    ], result.stderr


def test_hub_publish_reaches_a_cluster_and_checks_its_layout(
    cluster_redis: RedisCluster, tmp_path: Path
) -> None:
    """The command line publishes into the account's shard (hubs see it), and refuses, in
    one line, a layout other than the one the data was written with."""
    cluster_redis.flushall()
    cluster_redis.client().set("hub:layout", "shards=16")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    env |= {"HUB_DATA_DIR": str(tmp_path), "REDIS_URL": cluster_redis.url}
    result = hub_command("publish", "7", "Greeting", '{"hi": 1}', env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    layout = cluster_redis.layout
    client = cluster_redis.client()
    [(entry_id, _)] = client.xrange(layout.account_log("7"))
    assert entry_id.decode() == result.stdout.strip()
    [(_, announced)] = client.xrange(layout.index(layout.shard_of("7")))
    assert announced[b"account"] == b"7"

    other = hub_command(
        "publish", "7", "T", "1", env={**env, "HUB_INDEX_SHARDS": "8"}, cwd=tmp_path
    )
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1
    assert "shards=16" in other.stderr
    assert len(client.xrange(layout.account_log("7"))) == 1


def _publish(client: Client, account: str, **headers: str) -> Any:
    return client.post(
        f"/accounts/{account}/events", json={"type": "T"}, headers={**bearer("p", "*"), **headers}
    )


async def test_an_error_reply_to_the_wait_is_answered_504_not_503(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """An error reply to WAIT (a demoted primary's UNBLOCKED; here NOPERM, which alone would
    read as "refused, nothing done") comes after the event was stored: its fate is unknown,
    504 `outcome_unknown`, never 503, which would tell a client without a key to publish again."""
    client = await make_client(settings, redis_url=cluster.url)
    layout = cluster.layout
    account = "u1"
    master = cluster.master_of(layout.index(layout.shard_of(account)))
    assert (await _publish(client, account)).status == 201
    master.client().execute_command("ACL", "SETUSER", "default", "-wait")
    response = await _publish(client, account)
    assert (response.status, (await response.json())["error"]) == (504, "outcome_unknown")
    assert len(await _history(client, account)) == 2  # it was stored


async def test_a_publish_after_the_node_closed_the_pooled_connections_is_stored(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """A node that closed the hub's connections (restarted, or CLIENT KILL as here): the
    pooled connection is found closed before the publish is sent on it, and replaced."""
    client = await make_client(settings, redis_url=cluster.url)
    layout = cluster.layout
    account = "k1"
    master = cluster.master_of(layout.index(layout.shard_of(account)))
    assert (await _publish(client, account)).status == 201
    master.client().execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    response = await _publish(client, account)
    assert response.status == 201, await response.text()
    assert len(await _history(client, account)) == 2


async def test_more_publishes_than_a_node_s_connections_wait_for_one(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """A node's pool raises at once when no connection is free; publishes wait instead, as
    on a single Redis (the hub's own gate per node)."""
    client = await make_client(settings, redis_url=cluster.url, redis_pool_size=2, wait_replicas=0)
    account = "g1"
    responses = await asyncio.gather(*(_publish(client, account) for _ in range(20)))
    assert [r.status for r in responses] == [201] * 20
    assert len(await _history(client, account)) == 20


async def test_a_publish_answered_tryagain_waits_for_the_slot_s_keys_to_move(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """While a slot's keys are half moved, a multi-key command is answered TRYAGAIN: nothing
    ran. The publish pauses before each new try (REDIRECTS of them), so that a migration
    finishing meanwhile lets it through rather than every try failing within a millisecond."""
    client = await make_client(settings, redis_url=cluster.url)
    layout = cluster.layout
    account = "r1"
    log_key = layout.account_log(account)
    source = cluster.master_of(log_key)
    target = next(m for m in cluster.masters() if m is not source)
    assert (await _publish(client, account)).status == 201  # the account's keys exist
    src, dst = source.client(), target.client()
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", log_key))
    ids = [node.execute_command("CLUSTER", "MYID").decode() for node in (src, dst)]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[0])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[1])
    src.execute_command("MIGRATE", "127.0.0.1", target.port, log_key, 0, 5000)

    def tryagains() -> int:
        stats = src.info("errorstats")
        return int(stats.get("errorstat_TRYAGAIN", {}).get("count", 0))

    publishing = asyncio.ensure_future(_publish(client, account))
    await wait_until(lambda: tryagains() > 0, what="a TRYAGAIN")
    rest = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
    for node in (dst, src, *(m.client() for m in cluster.masters() if m not in (source, target))):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[1])
    response = await publishing
    assert response.status == 201, await response.text()
    assert len(await _history(client, account)) == 2


async def test_repeated_moved_replies_do_not_cut_a_publish_in_flight_elsewhere(
    cluster: RedisCluster, make_client: Any, settings: Settings
) -> None:
    """redis-py closes every node's connections on each 5th MOVED by default (to reload the
    cluster): a publish waiting on another node would lose its connection and be answered
    504. The hub's client only updates the moved slot."""
    client = await make_client(settings, redis_url=cluster.url, wait_timeout_ms=9000)
    layout = cluster.layout
    account = "u1"
    home = cluster.master_of(layout.index(layout.shard_of(account)))
    replica = cluster.replica_of(home)
    assert (await _publish(client, account)).status == 201
    # A shard no one published to (its slot holds no key) on the other masters, and an
    # account of it whose history the hub reads through redis-py after each move.
    masters = cluster.masters()  # asked before the replica is paused: it would not answer
    others = [m for m in masters if m is not home]
    shard = next(
        s for s in layout.index_shards() if cluster.master_of(layout.index(s)) is others[0]
    )
    reader = next(f"h{n}" for n in range(10_000) if layout.shard_of(f"h{n}") == shard)
    slot = int(others[0].client().execute_command("CLUSTER", "KEYSLOT", layout.index(shard)))
    ids = [m.client().execute_command("CLUSTER", "MYID").decode() for m in others]
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        publishing = asyncio.ensure_future(_publish(client, account))
        admin = home.client()
        await wait_until(
            lambda: any(c.get("cmd") == "wait" for c in admin.client_list()),
            what="the publish's WAIT",
        )
        for move in range(6):  # MOVED each time: the hub's client knows the old owner
            for master in masters:
                master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[~move % 2])
            await _history(client, reader)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    response = await publishing
    assert response.status == 201, await response.text()
