"""DESIGN.md's invariants, each shown against a real Redis over real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from hub.config import Settings
from hub.core.protocol import CloseCode
from hub.core.registry import Registry
from hub.core.stats import Stats
from hub.engine.notifier import Notifier
from hub.engine.session import Phase
from hub.redis.store import Store
from hub.redis.store import close as close_redis
from hub.redis.store import connect as connect_redis
from hub.web.state import NOTIFIERS, READER, REGISTRY, SESSIONS, STATS, STORE
from tests.support import (
    Monitor,
    RedisCluster,
    RedisServer,
    bearer,
    publish_pairs,
    receive_events,
    receive_json,
    receive_text,
    wait_until,
)
from tests.test_ws import connect, publish

Client = Any


async def test_only_the_sessions_of_the_account_read_and_they_share_one_read(
    client: Client, single_redis: RedisServer
) -> None:
    """(One node's command stream is watched.)"""
    accounts = [f"acc{n}" for n in range(20)]
    reader = client.app[READER]
    async with Monitor(single_redis.port) as monitor:
        sockets = {a: [await connect(client, a) for _ in range(3)] for a in accounts}
        await wait_until(lambda: reader.idle, what="no read in flight")
        # Empty accounts: nothing to catch up, so opening the sockets read no stream at all.
        assert monitor.reads_of() == []
        mark = len(monitor.commands)

        await publish(client, "acc7", "hello")
        for ws in sockets["acc7"]:
            await receive_events(ws, 1)
        # A second event on another account: by the time it is delivered, any read that
        # the first wake caused has long been sent.
        await publish(client, "acc3", "sentinel")
        for ws in sockets["acc3"]:
            await receive_events(ws, 1)

        reads = Monitor.reads_of_commands(monitor.commands[mark:])
    # Three sockets per account, one XREAD per account: they were at the same position.
    assert sorted(reads) == ["account:acc3:log", "account:acc7:log"]


async def test_accounts_woken_together_are_read_in_one_command(
    client: Client, redis_server: RedisServer
) -> None:
    accounts = [f"many{n}" for n in range(50)]
    reader = client.app[READER]
    sockets = {a: await connect(client, a) for a in accounts}
    await wait_until(lambda: reader.idle, what="the catch-up reads")
    before = redis_server.command_calls().get("xread", 0)

    # One pipeline of 50 publishes: the notifier sees them in one batch and wakes 50 accounts.
    ids = publish_pairs(redis_server.client(), [(a, "x") for a in accounts])
    for account, event_id in zip(accounts, ids, strict=True):
        [event] = await receive_events(sockets[account], 1)
        assert event["id"] == event_id
    await wait_until(lambda: reader.idle, what="the reads")
    xreads = redis_server.command_calls()["xread"] - before
    # The notifier's own XREADs (one or two per index shard woken) and a few multi-stream
    # reads for 50 accounts (one per shard: a read may not span slots).
    shards = len({redis_server.layout.shard_of(a) for a in accounts})
    assert xreads <= 4 * shards, xreads


async def test_idle_sockets_cost_redis_nothing(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    client = await make_client(settings)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = client.make_url("/ws/")

        async def open_socket(n: int) -> Any:
            ws = await session.ws_connect(f"{url}{n % 100}", headers=bearer(str(n % 100)))
            await receive_json(ws, timeout=30)
            return ws

        sockets = []
        for start in range(0, 1000, 100):
            sockets += await asyncio.gather(*(open_socket(n) for n in range(start, start + 100)))
        assert len(client.app[REGISTRY]) == 1000

        # The window: until every notifier has renewed its blocking read once (one BLOCK).
        stats, shards = client.app[STATS], len(client.app[NOTIFIERS])
        reads = sum(stats.notifier_reads.values())
        before = redis_server.command_calls()
        await wait_until(
            lambda: sum(stats.notifier_reads.values()) >= reads + shards,
            timeout=30,
            what="every notifier's next blocking read",
        )
        after = redis_server.command_calls()

        spent = {name: after[name] - before.get(name, 0) for name in after}
        # This test's own INFO on a fresh connection, its lookups of a cluster's masters, and
        # replicas acknowledging replication to them.
        measuring = {"info", "hello", "cluster|nodes", "replconf"}
        spent = {name: calls for name, calls in spent.items() if calls and name not in measuring}
        # One blocked XREAD per index shard renewed every 5 s BLOCK: one or two commands per
        # shard in 5 s, however many sockets.
        shards = len(client.app[NOTIFIERS])
        assert sum(spent.values()) <= 2 * shards + 1, spent
        assert set(spent) <= {"xread"}, spent
        for ws in sockets:
            await ws.close()


async def test_no_lost_wake_up_for_an_event_right_after_the_handshake(client: Client) -> None:
    for n in range(20):
        account = f"fresh{n}"
        ws = await connect(client, account, "?last_id=$")
        published = await publish(client, account, n)
        [event] = await receive_events(ws, 1, timeout=5)
        assert event["id"] == published
        await ws.close()


async def test_no_lost_wake_up_during_catch_up(client: Client, redis_server: RedisServer) -> None:
    redis = redis_server.client()
    for n in range(20):
        account = f"busy{n}"
        pipe = redis.pipeline(transaction=False)
        for i in range(300):
            pipe.xadd(redis_server.layout.account_log(account), {"type": "Old", "payload": str(i)})
        ids = [entry_id.decode() for entry_id in pipe.execute()]

        ws = await connect(client, account, "?last_id=0")
        ids.append(await publish(client, account, "while catching up"))  # the catch-up runs now
        events = await receive_events(ws, len(ids), timeout=10)
        assert [e["id"] for e in events] == ids  # every event, once, in order
        try:
            extra = await ws.receive(timeout=0.05)
        except TimeoutError:
            extra = None
        assert extra is None, f"unexpected frame {extra}"
        await ws.close()


async def test_many_sockets_closing_at_once_leave_nothing_behind(
    make_client: Any, settings: Settings, single_redis: RedisServer
) -> None:
    """(One node's pool and client list are checked.)"""
    client = await make_client(settings, redis_pool_size=8)
    app = client.app
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        url = client.make_url("/ws/")
        sockets = await asyncio.gather(
            *(session.ws_connect(f"{url}{n % 5}", headers=bearer(str(n % 5))) for n in range(200))
        )
        for ws in sockets:
            await receive_json(ws)
        redis = single_redis.client()
        for account in range(5):
            for i in range(150):
                redis.xadd(f"account:{account}:log", {"type": "T", "payload": str(i)})
            await publish(client, str(account), "wake")
        # Reads are in flight for every session: drop every client connection at once.
        for ws in sockets:
            ws._writer.transport.abort()  # no close handshake: a vanished client
        for ws in sockets:
            await ws.close()

    await wait_until(lambda: not app[SESSIONS] and len(app[REGISTRY]) == 0, what="sessions gone")
    await wait_until(
        lambda: not [t for t in asyncio.all_tasks() if t.get_name().startswith("deliver:")],
        what="delivery tasks gone",
    )
    pool = app[STORE].redis.connection_pool
    await wait_until(lambda: not pool._in_use_connections, what="pool connections returned")
    assert len(pool._available_connections) <= 8
    # Redis sees at most the pool and the notifier: no connection leaked.
    clients = [c for c in single_redis.client().client_list() if c["name"].startswith("hub")]
    assert len(clients) <= 8 + 1, [(c["name"], c["cmd"]) for c in clients]
    # The hub still serves.
    ws = await connect(client, "0", "?last_id=$")
    published = await publish(client, "0", "still alive")
    assert [e["id"] for e in await receive_events(ws, 1)] == [published]


async def test_notifier_recovers_when_redis_restarts_under_the_hub(
    make_client: Any, settings: Settings, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "aof", appendonly=True)
    redis.start()
    client = await make_client(settings, redis_url=redis.url)
    ws = await connect(client, "1", "?last_id=$")
    before = await publish(client, "1", "before")
    assert [e["id"] for e in await receive_events(ws, 1)] == [before]

    # Stopped and started with its data: the blocked XREAD and every pooled connection break,
    # nothing is lost, and the socket goes on.
    redis.stop()
    redis.start()

    async def published_after() -> bool:
        response = await client.post(
            "/accounts/1/events", json={"type": "T", "payload": "after"}, headers=bearer("s", "*")
        )
        return bool(response.status == 201)

    await wait_until(published_after, timeout=20, what="a publish after the restart")
    [event] = await receive_events(ws, 1, timeout=20)
    assert event["payload"] == "after"

    async def ready() -> bool:
        return bool((await client.get("/readyz")).status == 200)

    await wait_until(ready, timeout=20, what="ready again")
    again = await publish(client, "1", "later")
    assert [e["id"] for e in await receive_events(ws, 1)] == [again]
    redis.stop()


async def test_a_live_socket_is_told_when_redis_loses_its_data(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    """Redis restarted empty under an open socket: events it had not read may be gone. It is
    closed with 4009 and its last ID, never fed the new history as if nothing happened, and
    the reconnect says `recovered: false`."""
    client = await make_client(settings, redis_url=own_redis.url)
    ws = await connect(client, "1", "?last_id=$")
    before = await publish(client, "1", "before")
    assert [e["id"] for e in await receive_events(ws, 1)] == [before]

    own_redis.restart()  # killed, no persistence: the account's history is gone

    async def published_after() -> bool:
        response = await client.post(
            "/accounts/1/events", json={"type": "T", "payload": "after"}, headers=bearer("s", "*")
        )
        return bool(response.status == 201)

    await wait_until(published_after, timeout=20, what="a publish after the restart")
    close = await ws.receive(timeout=20)
    assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, CloseCode.LAGGED, before)
    again = await connect(client, "1", f"?last_id={before}&epoch={ws.welcome['epoch']}")
    assert again.welcome["recovered"] is False


async def test_hub_processes_are_interchangeable(make_client: Any, settings: Settings) -> None:
    first, second = await make_client(settings), await make_client(settings)
    on_first = await connect(first, "1")
    on_second = await connect(second, "1")
    published = [await publish(second, "1", n) for n in range(3)]
    published.append(await publish(first, "1", 3))
    for ws in (on_first, on_second):
        assert [e["id"] for e in await receive_events(ws, 4)] == published

    # A client of the first process resumes on the second from its last ID.
    await on_first.close()
    later = await publish(first, "1", "later")
    resumed = await connect(second, "1", f"?last_id={published[-1]}")
    assert resumed.welcome["recovered"] is True
    assert [e["id"] for e in await receive_events(resumed, 1)] == [later]


async def test_a_socket_survives_redis_being_down(
    make_client: Any, settings: Settings, tmp_path: Path
) -> None:
    """Redis down for a while, then back with its data: the socket stays open throughout.
    (Back without its data, the socket is told: see the test above.)"""
    own_redis = RedisServer(tmp_path / "aof", appendonly=True)
    own_redis.start()
    client = await make_client(settings, redis_url=own_redis.url)
    ws = await connect(client, "1", publish=["1"])
    own_redis.stop()

    await ws.send_json({"op": "publish", "to": "1", "type": "T", "ref": "down"})
    error = await receive_json(ws)
    assert (error["op"], error["code"], error["ref"]) == ("error", "unavailable", "down")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws/2", headers=bearer("2"))
    assert refused.value.status == 503

    own_redis.start()
    await ws.send_str("ping")
    assert await receive_text(ws) == "pong"
    await ws.send_json({"op": "publish", "to": "1", "type": "T", "ref": "up"})
    # The ack and the event itself may come in either order.
    frames = [await receive_json(ws), await receive_json(ws)]
    [ack] = [frame for frame in frames if "op" in frame]
    [event] = [frame for frame in frames if "op" not in frame]
    assert (ack["op"], ack["ref"], ack["id"]) == ("ack", "up", event["id"])
    own_redis.stop()


async def test_a_session_that_cannot_read_for_too_long_closes_with_1013(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    client = await make_client(settings, redis_url=own_redis.url, read_failure_limit=0.5)
    ws = await connect(client, "1")
    last = await publish(client, "1", "x")
    await receive_events(ws, 1)
    own_redis.stop()
    client.app[REGISTRY].wake_all()  # what the notifier does whenever in doubt

    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (CloseCode.TRY_AGAIN_LATER, last)


async def test_sockets_opening_at_once_pin_their_starts_with_few_commands(
    client: Client, redis_server: RedisServer
) -> None:
    accounts = [f"burst{n}" for n in range(40)]
    # Each account has a history of its own length; each socket resumes from its middle.
    history = {
        a: publish_pairs(redis_server.client(), [(a, k) for k in range(n + 2)])
        for n, a in enumerate(accounts)
    }
    before = redis_server.command_calls().get("evalsha", 0)

    sockets = await asyncio.gather(
        *(connect(client, a, f"?last_id={history[a][len(history[a]) // 2]}") for a in accounts)
    )
    opens = redis_server.command_calls()["evalsha"] - before
    # One head script per open would be 40: opens that arrive while one is in flight share one
    # (on a cluster, one per index shard: a script's keys share one slot).
    shards = len({redis_server.layout.shard_of(a) for a in accounts})
    assert opens <= 10 + (shards if shards > 1 else 0), opens
    for account, ws in zip(accounts, sockets, strict=True):
        ids = history[account]
        expected = ids[len(ids) // 2 + 1 :]
        assert ws.welcome["recovered"] is True
        events = await receive_events(ws, len(expected)) if expected else []
        assert [e["id"] for e in events] == expected


async def test_a_steady_flow_reaches_every_socket_whole_and_in_order(
    client: Client, redis_server: RedisServer
) -> None:
    """Wakes keep coming while reads for the same sessions are on their way (pushed or read
    by the sessions themselves): none may be lost, nothing may be sent twice."""
    accounts = [f"flow{n}" for n in range(20)]
    sockets = {a: [await connect(client, a) for _ in range(5)] for a in accounts}
    redis = redis_server.client()
    published: dict[str, list[str]] = {a: [] for a in accounts}
    for round_ in range(150):
        pairs = [(a, round_) for a in accounts[round_ % 3 :: 2]]
        for (account, _), event_id in zip(pairs, publish_pairs(redis, pairs), strict=True):
            published[account].append(event_id)
        await asyncio.sleep(0.001 * (round_ % 4))  # pacing that varies the interleavings

    for account, expected in published.items():
        for ws in sockets[account]:
            events = await receive_events(ws, len(expected))
            assert [e["id"] for e in events] == expected


async def test_the_notifier_stops_at_the_end_of_its_block_without_a_cancellation(
    redis_server: RedisServer | RedisCluster,
) -> None:
    """Shutdown must not hang on a cancellation lost inside a Redis command: the stop flag
    alone ends the loop."""
    layout = redis_server.layout
    redis = connect_redis(redis_server.url, pool_size=1, socket_timeout=5, cluster=layout.clustered)
    stats = Stats()
    store = Store(redis, retention=100, index_retention=100, layout=layout)
    notifier = Notifier(store, Registry(), block_ms=200, per_read=10, stats=stats)
    task = asyncio.create_task(notifier.run())
    try:
        await wait_until(lambda: sum(stats.notifier_reads.values()) >= 2, what="a blocking read")
        notifier.stop()
        await asyncio.wait_for(task, timeout=2)  # one BLOCK (0.2 s) at most
    finally:
        task.cancel()
        await close_redis(redis)


async def test_a_read_sent_before_a_doubt_is_not_delivered_after_it(client: Any) -> None:
    """The race the doubt check must win: a read for an idle socket is on its way when the
    notifier learns Redis was lost. Its batch, unchecked, must not be written: it could carry
    the new history past a gap, and the socket's next check would then find nothing amiss."""
    from hub.engine.reads import Batch

    ws = await connect(client, "1", "?last_id=$")
    [session] = client.app[SESSIONS]
    await wait_until(lambda: session.phase is Phase.PARKED, what="the socket to be idle")
    frame = b'{"id":"9-0","type":"T","payload":null}'
    unchecked = Batch(ids=[b"9-0"], frames=[frame], full=False, lost=False)
    session.in_doubt = True  # the notifier's doubt lands while that read was on its way
    assert (
        session.deliver_read(session.cursor, unchecked) is False
    )  # not written: read again, checked
    checked = Batch(ids=[b"9-0"], frames=[frame], full=False, lost=False, verified=True)
    assert session.deliver_read(session.cursor, checked) is True
    assert session.in_doubt is False
    assert (await receive_events(ws, 1))[0]["id"] == "9-0"


async def test_a_read_made_at_an_older_cursor_is_not_delivered(client: Any) -> None:
    """A read for an idle socket was made at its cursor then; meanwhile the session read for
    itself and sent those events. The batch, read at the older cursor, must not be written:
    it would repeat them (`Session.deliver_read`: `self.cursor != cursor`)."""
    from hub.core.ids import StreamId
    from hub.engine.reads import Batch

    ws = await connect(client, "1", "?last_id=$")
    sent = await publish(client, "1", "once")
    assert [e["id"] for e in await receive_events(ws, 1)] == [sent]
    [session] = client.app[SESSIONS]
    await wait_until(lambda: session.phase is Phase.PARKED, what="the socket to be idle")
    frame = b'{"id":"%s","type":"T","payload":"once"}' % sent.encode()
    stale = Batch(ids=[sent.encode()], frames=[frame], full=False, lost=False)
    assert session.deliver_read(StreamId.parse(sent).prev(), stale) is False
    later = await publish(client, "1", "next")
    assert [e["id"] for e in await receive_events(ws, 1)] == [later]  # not `sent` again


async def test_an_event_published_while_a_socket_pins_its_start_reaches_it(
    client: Any,
) -> None:
    """The open registers the socket before it reads where the stream ends (`subscriptions.
    pin`): an event published just after that read, and announced by the notifier before the
    socket is served, must still wake it (it is after the pinned position)."""
    from hub.core.ids import StreamId
    from hub.web.state import STREAM_STATES

    stream_states = client.app[STREAM_STATES]
    read_states = stream_states._call
    published: list[str] = []

    async def states_then_an_event(positions: Any) -> Any:
        states = await read_states(positions)
        published.append(await publish(client, "1", "just after the pin"))
        sent = StreamId.parse(published[0])
        notifiers = client.app[NOTIFIERS]
        await wait_until(
            lambda: any(n.position is not None and n.position >= sent for n in notifiers),
            what="the notifier to announce the event",
        )
        return states

    stream_states._call = states_then_an_event
    ws = await connect(client, "1", "?last_id=$")
    stream_states._call = read_states
    assert [e["id"] for e in await receive_events(ws, 1)] == published


async def test_a_read_made_for_a_parked_socket_is_not_written_once_it_is_busy(
    client: Any,
) -> None:
    """A read made for an idle socket comes back after a reply woke its delivery task. The
    task may be reading the same position itself (a wake came meanwhile): only a parked
    session takes a read made for it (`Session.deliver_read`: the phase check)."""
    from hub.core import protocol
    from hub.engine.reads import Batch

    ws = await connect(client, "1", "?last_id=$")
    [session] = client.app[SESSIONS]
    await wait_until(lambda: session.phase is Phase.PARKED, what="the socket to be idle")
    await session.reply(protocol.PONG.encode())  # the delivery task is busy from here
    assert session.phase is Phase.SENDING
    frame = b'{"id":"9-0","type":"T","payload":null}'
    batch = Batch(ids=[b"9-0"], frames=[frame], full=False, lost=False)
    assert session.deliver_read(session.cursor, batch) is False
    assert await receive_text(ws) == protocol.PONG.encode().decode()
    later = await publish(client, "1", "next")
    assert [e["id"] for e in await receive_events(ws, 1)] == [later]  # 9-0 never came


async def test_a_read_handed_back_while_the_socket_is_busy_is_made_by_the_socket(
    client: Any,
) -> None:
    """The reader hands back a read it made for an idle socket because a reply made the
    socket's task busy meanwhile. The task reads for itself before it parks again: handing the
    wake to the reader once more could repeat forever while replies keep it busy."""
    from hub.core import protocol
    from hub.web.state import READER

    ws = await connect(client, "1", "?last_id=$")
    [session] = client.app[SESSIONS]
    await wait_until(lambda: session.phase is Phase.PARKED, what="the socket to be idle")
    reader = client.app[READER]
    read_for, asked = reader.read_for, []
    reader.read_for = lambda listener: (asked.append(listener), read_for(listener))[1]  # type: ignore[method-assign]
    await session.reply(protocol.PONG.encode())  # busy from here
    session.resume()  # as the reader does when its read finds the task busy
    assert await receive_text(ws) == protocol.PONG.encode().decode()
    await wait_until(lambda: session.phase is Phase.PARKED, what="the socket to be idle again")
    assert asked == []  # it read for itself, and parked with nothing pending


async def test_a_session_whose_read_failed_checks_its_position_next(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    """A session may read again before the notifier has even noticed Redis was gone: its own
    failed read puts it in doubt, so that it checks its position before reading on."""
    client = await make_client(settings, redis_url=own_redis.url)
    await connect(client, "1")
    [session] = client.app[SESSIONS]
    own_redis.stop()
    session.signal.wake()  # a read now, which fails
    await wait_until(lambda: session.in_doubt, what="the failed read to put it in doubt")
