"""The one classifier of Redis failures (hub.redis.store.failure): what each error means to the
caller. Pure: the errors are built, not provoked."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hub.redis.store import Failure, failure, unavailable


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (RedisConnectionError("Connection refused"), Failure.UNREACHED),
        (RedisTimeoutError("Timeout reading from socket"), Failure.UNREACHED),
        (MaxConnectionsError("Too many connections"), Failure.UNREACHED),
        (OSError("Network is unreachable"), Failure.UNREACHED),
        (TimeoutError(), Failure.UNREACHED),
        (BusyLoadingError("LOADING Redis is loading the dataset in memory"), Failure.REFUSED),
        (OutOfMemoryError("OOM command not allowed"), Failure.REFUSED),
        (ReadOnlyError("READONLY You can't write against a read only replica."), Failure.REFUSED),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), Failure.REFUSED),
        (ResponseError("BUSY Redis is busy running a script."), Failure.REFUSED),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), Failure.REFUSED),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), Failure.REFUSED),
        (SlotNotCoveredError('Slot "12" is not covered by the cluster.'), Failure.REFUSED),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), Failure.FAILED),
        (ResponseError("ERR Error running script"), Failure.FAILED),
        (ValueError("not Redis's"), None),
    ],
)
def test_each_redis_failure_has_one_meaning(error: Exception, meaning: Failure | None) -> None:
    assert failure(error) is meaning
    assert unavailable(error) == (meaning in (Failure.UNREACHED, Failure.REFUSED))


async def test_a_stated_redis_mode_is_taken_without_asking_redis() -> None:
    """HUB_REDIS_MODE=cluster or single: the layout is known even while Redis is away (a hub
    restarted during a failover); `auto` has to ask, and says it cannot."""
    from hub.core.keys import SINGLE, Layout
    from hub.redis.store import REDIS_FAILURES, layout_of

    nowhere = "redis://127.0.0.1:1/0"
    assert await layout_of(nowhere, 16, "cluster") == Layout(16)
    assert await layout_of(nowhere, 16, "single") == SINGLE
    with pytest.raises(REDIS_FAILURES):
        await layout_of(nowhere, 16, "auto")
