"""What every way of subscribing (`/ws`, `/sse`) does around the delivery engine: register
before pinning the start position, log the open and the close, unregister at the end."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from hub.core.auth import Claims, require
from hub.core.cursor import Requested, Start, resolve_start
from hub.core.errors import RequestError, Unavailable
from hub.core.protocol import CloseCode
from hub.engine.session import Session
from hub.engine.wire import Wire
from hub.redis.store import REDIS_FAILURES
from hub.web.callers import account_param, authenticate
from hub.web.state import ADMISSION, READER, REGISTRY, SESSIONS, SETTINGS, STATS, STREAM_STATES

log = structlog.get_logger(__name__)
_connection_ids = itertools.count(1)


async def pin(
    request: web.Request, account: str, claims: Claims, requested: Requested, epoch: str | None
) -> tuple[Session, Start, str]:
    """A registered session and its concrete start position, with the account's epoch.

    Register first, then pin the position, then answer: an event published at any instant
    from here on is either before the pinned position or wakes this session.
    """
    session = Session(
        account,
        claims,
        reader=request.app[READER],
        settings=request.app[SETTINGS],
        stats=request.app[STATS],
        conn=f"c{next(_connection_ids)}",
        via=via(request),
    )
    registry = request.app[REGISTRY]
    registry.register(account, session.signal)
    try:
        state = await request.app[STREAM_STATES]((account, requested.after))
    except REDIS_FAILURES as error:
        registry.unregister(account, session.signal)
        raise Unavailable(f"Redis is unavailable: {error}") from None
    except BaseException:
        registry.unregister(account, session.signal)
        raise
    return session, resolve_start(requested, state, epoch), state.epoch


async def serve(
    request: web.Request,
    session: Session,
    wire: Wire,
    start: Start,
    epoch: str,
    listen: Callable[[], Awaitable[None]],
) -> None:
    """Run a pinned session over its opened wire until either side ends it."""
    sessions, stats = request.app[SESSIONS], request.app[STATS]
    sessions.add(session)
    stats.opened[session.via] += 1
    try:
        log.info(
            "session_opened",
            account=session.account,
            conn=session.conn,
            via=session.via,
            last_id=str(start.reported),
            recovered=start.recovered,
        )
        await session.run(wire, start, epoch, listen)
        stats.closed[close_label(session.close_code)] += 1
        log.info(
            "session_closed",
            account=session.account,
            conn=session.conn,
            last_id=str(session.cursor),
            code=session.close_code,
        )
    finally:
        release(request, session)


_KNOWN_CLOSES = frozenset({*range(1000, 1016), *map(int, CloseCode)})


def close_label(code: int | None) -> str:
    """The `code` label of a close: the code, when the hub or the RFC knows it; a client may
    send any of 3000-4999, which would make a label value each."""
    if code is None:
        return "none"
    return str(code) if code in _KNOWN_CLOSES else "other"


def admit(request: web.Request) -> None:
    """The process's admission limits, before any other work (`TooBusy`)."""
    request.app[ADMISSION].admit(len(request.app[REGISTRY]), time.monotonic())


def subscriber(request: web.Request) -> tuple[str, Claims]:
    """The account of the path and the token's claims, once the token may open it and the
    account has room on this process (`TooManySockets`)."""
    account = account_param(request)
    claims = authenticate(request)
    require(claims.may_open(account), f"subscribing to the events of account {account}")
    request.app[ADMISSION].admit_account(account, request.app[REGISTRY].listeners(account))
    return account, claims


async def started(
    request: web.Request, session: Session, prepare: Callable[[], Awaitable[object]]
) -> bool:
    """Send the response's head (`prepare`); False when the client left meanwhile. A pinned
    session is forgotten whatever goes wrong."""
    try:
        await prepare()
    except ConnectionResetError:
        release(request, session)
        return False
    except BaseException:
        release(request, session)
        raise
    return True


def via(request: web.Request) -> str:
    """How the client subscribes: `ws` or `sse` (the first segment of the path)."""
    return request.path.split("/", 2)[1]


def refused(request: web.Request, error: RequestError) -> None:
    """Count a subscription refused before it opened."""
    request.app[STATS].refused[error.code] += 1


def release(request: web.Request, session: Session) -> None:
    """Forget a session pinned by `pin` (served or not)."""
    request.app[REGISTRY].unregister(session.account, session.signal)
    request.app[SESSIONS].discard(session)
