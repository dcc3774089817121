"""`hub serve`, `hub token`, `hub publish`: the command line (also `python -m hub`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import orjson
import structlog

from hub import logs
from hub.config import Settings, load_settings
from hub.core.auth import mint, parse_publish_list
from hub.core.errors import HubError
from hub.core.events import encode_payload, parse_json, validate_type
from hub.core.ids import validate_account_id, validate_idempotency_key

DEFAULT_TTL = 3600
INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Real-time fan-out of events to WebSocket clients on Redis."
    )
    parser.add_argument("--version", action="version", version=f"hub {version('hub')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the hub")
    serve.add_argument("--host", help="listen address (overrides HUB_HOST)")
    serve.add_argument("--port", type=int, help="listen port (overrides HUB_PORT)")
    serve.add_argument(
        "--workers", help="worker processes on the port, or 'auto': one per core (HUB_WORKERS)"
    )

    token = commands.add_parser("token", help="print a token signed with HUB_SECRET")
    token.add_argument("subject", help="the account ID (or service name) of the bearer")
    token.add_argument("--publish", default="", help="'*' or comma-separated account IDs")
    token.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds (negative: expired)")

    publish = commands.add_parser("publish", help="publish one event")
    publish.add_argument("account")
    publish.add_argument("type")
    publish.add_argument("payload", help="JSON, or any other text taken as a string")
    publish.add_argument(
        "--key", help="idempotency key: a repeat within HUB_IDEMPOTENCY_WINDOW stores nothing"
    )

    migrate = commands.add_parser(
        "migrate",
        help="copy a single Redis node's accounts into a Redis Cluster (resumable)",
        description="Copy a single Redis node's accounts (streams with their IDs, epochs, "
        "idempotency keys, email reservations, the account ID sequence) into the cluster "
        "layout with HUB_INDEX_SHARDS shards. Running it again copies only what is new.",
    )
    migrate.add_argument("--from", dest="source", required=True, help="the single node's URL")
    migrate.add_argument("--to", dest="target", required=True, help="any cluster node's URL")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Exit status: 0 done (a server stopped by SIGTERM included), 2 a usage or configuration
    error, 130 interrupted (Ctrl-C, SIGINT: a server drains first)."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            if _serve(settings, args.host, args.port, args.workers) == signal.SIGINT:
                sys.exit(INTERRUPTED)
        elif args.command == "token":
            print(_token(settings, args.subject, args.publish, args.ttl))
        elif args.command == "migrate":
            print(asyncio.run(_migrate(settings, args.source, args.target)))
        else:
            published = _publish(settings, args.account, args.type, args.payload, args.key)
            print(asyncio.run(published))
    except HubError as error:
        print(f"hub: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # before `serve` handles SIGINT itself, or in another command
        sys.exit(INTERRUPTED)


def _serve(settings: Settings, host: str | None, port: int | None, workers: str | None) -> int:
    """Serve until a signal; the signal's number. Several workers: this process supervises
    them (hub/supervisor.py), and each is this command again, told which one it is."""
    from hub.supervisor import METRICS_ENV, WORKER_ENV, Supervisor
    from hub.web.app import create_app
    from hub.web.server import serve

    settings = settings.with_overrides(host=host, port=port, workers=workers)
    logs.configure(settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    worker = os.environ.get(WORKER_ENV)
    if worker is None and settings.workers > 1:
        return asyncio.run(Supervisor(settings).run())
    if worker is None:
        return asyncio.run(serve(create_app(settings), settings))
    structlog.contextvars.bind_contextvars(worker=int(worker))  # on every line it logs
    app = create_app(settings, shared_metrics=Path(os.environ[METRICS_ENV]))
    return asyncio.run(serve(app, settings, reuse_port=True))


async def _migrate(settings: Settings, source: str, target: str) -> str:
    from hub.redis.migrate import migrate
    from hub.redis.store import REDIS_FAILURES

    try:
        done = await migrate(source, target, settings.index_shards, sys.stderr)
    except REDIS_FAILURES as error:
        raise HubError(f"migration stopped (run it again to resume): {error}") from None
    summary = (
        f"migrated {done.done:,} accounts: {done.events:,} events copied, "
        f"{done.idempotency_keys:,} idempotency keys, {done.emails:,} email reservations"
    )
    if done.conflicts:
        summary += f"; {done.conflicts:,} email reservations on the target name other accounts"
    if done.diverged:
        shown = ", ".join(done.diverged[:10]) + (" …" if len(done.diverged) > 10 else "")
        summary += (
            f"; {len(done.diverged):,} accounts left as they are, written on the cluster since "
            f"the cut-over: {shown}"
        )
    return summary


def _token(settings: Settings, subject: str, publish: str, ttl: int) -> str:
    if settings.secret is None:
        raise HubError("HUB_SECRET must be set (in the environment or .env) to mint tokens")
    rights = parse_publish_list(publish) if publish else ()
    return mint(settings.secret, subject, time.time(), ttl, rights)


def _payload(text: str) -> bytes:
    """PAYLOAD as JSON text, or as a JSON string when it is not JSON."""
    try:
        return encode_payload(parse_json(text))
    except orjson.JSONDecodeError:
        return encode_payload(text)


async def _publish(
    settings: Settings, account: str, event_type: str, payload: str, key: str | None
) -> str:
    from hub.redis.embedded import require_running
    from hub.redis.store import REDIS_FAILURES, Store, close, connect, layout_of

    validate_account_id(account)
    validate_type(event_type)
    if key is not None:
        validate_idempotency_key(key)
    data = _payload(payload)
    url = settings.redis_url or require_running(settings.data_dir)
    try:
        layout = await layout_of(url, settings.index_shards, settings.redis_mode)
    except REDIS_FAILURES as error:
        raise HubError(f"cannot publish through {url}: {error}") from None
    redis = connect(url, pool_size=1, socket_timeout=10, cluster=layout.clustered)
    try:
        store = Store.configured(redis, settings, layout)
        await store.check_layout(record=False)  # also learns a cluster's slots
        published = await store.publish(account, event_type, data, key=key)
        return published.id
    except REDIS_FAILURES as error:
        raise HubError(f"cannot publish through {url}: {error}") from None
    finally:
        await close(redis)
