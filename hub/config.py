"""Settings: read once from the environment (and an optional `.env`), validated at start.

Every error names the variable and the form it expects, so a bad deployment fails with one
clear line instead of a stack trace.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from hub.core.errors import ConfigError
from hub.core.ids import parse_decimal
from hub.core.origins import normalize

MIN_SECRET_LENGTH = 32
MAX_WORKERS = 256
T = TypeVar("T")


class AuthMode(Enum):
    TOKEN = "token"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the hub is configured with; the last group is fixed, not read from env."""

    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    secret: str | None = None
    auth: AuthMode = AuthMode.TOKEN
    data_dir: Path = Path("var")
    retention: int = 10_000
    allowed_origins: frozenset[str] | None = None
    max_message: int = 65_536
    log_level: str = "info"
    idempotency_window: int = 300  # seconds a publish's idempotency key is remembered
    # Admission limits (hub/core/admission.py), 0 for none. None: 90% of the open-file limit.
    max_sockets: int | None = None
    max_accept_rate: int = 2_000  # new subscriptions per second
    max_sockets_per_account: int = 100
    publish_rate: int = 100  # socket publishes per second, burst of twice that
    workers: int = 1  # processes serving the port (hub/supervisor.py); `auto`: one per core
    redis_mode: str = "auto"  # single, cluster, or auto: asked of Redis at start
    # Redis Cluster only (hub/core/keys.py, hub/redis/store.py).
    index_shards: int = 16  # index streams, each in its own slot; fixed for a deployment
    wait_replicas: int = 1  # replicas that must hold an event before it is acknowledged
    wait_timeout_ms: int = 1_000  # beyond this, the publish is answered 504 outcome_unknown

    block_ms: int = 5_000  # the notifier's XREAD BLOCK; readiness allows this + 5 s
    index_retention: int = 100_000  # approximate length of hub:index
    index_batch: int = 1_000  # entries per notifier read
    read_batch: int = 100  # entries per session read (bounded memory per socket)
    send_timeout: float = 20.0  # a client stuck longer is closed with 4008
    read_failure_limit: float = 30.0  # a session unable to read for longer closes with 1013
    heartbeat: float = 25.0  # below the 60 s idle timeout of common proxies
    sse_keepalive: float = 15.0  # an event stream's comment, when idle (proxies, gone clients)
    redis_pool_size: int = 64
    shutdown_grace: float = 5.0
    body_timeout: float = 10.0  # a request body must arrive within this (408 otherwise)
    header_timeout: float = 75.0  # request headers, and idle keep-alive connections
    redis_timeout: float = 10.0  # a command unanswered this long: the publish is 504

    @property
    def session_batch(self) -> int:
        """Entries per session read: never more than a stream retains (`StreamHead.lost_after`)."""
        return min(self.read_batch, self.retention) if self.retention else self.read_batch

    def with_overrides(
        self, *, host: str | None = None, port: int | None = None, workers: str | None = None
    ) -> Settings:
        """Apply `hub serve --host/--port/--workers`, then re-check what depends on them."""
        updated = replace(
            self,
            host=self.host if host is None else host,
            port=self.port if port is None else _port("--port", str(port)),
            workers=self.workers if workers is None else workers_count("--workers", workers),
        )
        updated.check_serving()
        return updated

    def check_serving(self) -> None:
        """What only `hub serve` needs: a secret, or HUB_AUTH=off on a loopback host."""
        _check_auth(self)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse `KEY=VALUE` lines; `#` comments, `export ` prefixes and quotes are understood."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Build Settings from `environ` (default: os.environ) over the `.env` file's values.

    Checks each value's form; `Settings.check_serving` adds what only serving requires.
    """
    env = {
        **(read_dotenv(dotenv) if dotenv else {}),
        **(os.environ if environ is None else environ),
    }
    default = Settings()

    def get(name: str, parse: Callable[[str, str], T], fallback: T) -> T:
        raw = env.get(name)
        return fallback if raw is None or raw == "" else parse(name, raw)

    return Settings(
        redis_url=get("REDIS_URL", _redis_url, None),
        host=get("HUB_HOST", _nonempty, default.host),
        port=get("HUB_PORT", _port, default.port),
        secret=get("HUB_SECRET", _secret, None),
        auth=get("HUB_AUTH", _auth, default.auth),
        data_dir=get("HUB_DATA_DIR", lambda _, v: Path(v), default.data_dir),
        retention=get("HUB_RETENTION", _int_at_least(0), default.retention),
        allowed_origins=get("HUB_ALLOWED_ORIGINS", _origins, None),
        max_message=get("HUB_MAX_MESSAGE", _int_at_least(1024), default.max_message),
        log_level=get("HUB_LOG_LEVEL", _log_level, default.log_level),
        idempotency_window=get(
            "HUB_IDEMPOTENCY_WINDOW", _int_at_least(1), default.idempotency_window
        ),
        max_sockets=get("HUB_MAX_SOCKETS", _int_at_least(0), None),
        max_accept_rate=get("HUB_MAX_ACCEPT_RATE", _int_at_least(0), default.max_accept_rate),
        max_sockets_per_account=get(
            "HUB_MAX_SOCKETS_PER_ACCOUNT", _int_at_least(0), default.max_sockets_per_account
        ),
        publish_rate=get("HUB_PUBLISH_RATE", _int_at_least(0), default.publish_rate),
        workers=get("HUB_WORKERS", workers_count, default.workers),
        redis_mode=get("HUB_REDIS_MODE", _redis_mode, default.redis_mode),
        index_shards=get("HUB_INDEX_SHARDS", _int_between(1, 16384), default.index_shards),
        wait_replicas=get("HUB_WAIT_REPLICAS", _int_at_least(0), default.wait_replicas),
        wait_timeout_ms=get("HUB_WAIT_TIMEOUT_MS", _int_between(1, 9_000), default.wait_timeout_ms),
        send_timeout=float(
            get("HUB_SEND_TIMEOUT", _int_between(1, 600), int(default.send_timeout))
        ),
    )


def workers_count(name: str, value: str) -> int:
    """A number of worker processes, or `auto`: one per core this process may run on."""
    if value.strip() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    count = _int_at_least(1)(name, value)
    if count > MAX_WORKERS:
        raise ConfigError(f"{name} must be at most {MAX_WORKERS}, got {value!r}")
    return count


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_auth(settings: Settings) -> None:
    if settings.auth is AuthMode.OFF:
        if not is_loopback(settings.host):
            raise ConfigError(
                f"HUB_AUTH=off is refused on {settings.host!r}: it trusts the URL path, so it "
                "is only allowed when HUB_HOST is a loopback address (127.0.0.1, ::1, localhost)"
            )
    elif settings.secret is None:
        raise ConfigError(
            f"HUB_SECRET is required (at least {MIN_SECRET_LENGTH} characters) unless "
            "HUB_AUTH=off; generate one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )


def _nonempty(name: str, value: str) -> str:
    if not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value.strip()


def _port(name: str, value: str) -> int:
    port = _int_at_least(0)(name, value)
    if port > 65535:
        raise ConfigError(f"{name} must be a port number from 0 to 65535, got {value!r}")
    return port


def _int_at_least(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        number = parse_decimal(value.strip())
        if number is None or number < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return number

    return parse


def _int_between(minimum: int, maximum: int) -> Callable[[str, str], int]:
    at_least = _int_at_least(minimum)

    def parse(name: str, value: str) -> int:
        number = at_least(name, value)
        if number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {value!r}")
        return number

    return parse


def _redis_mode(name: str, value: str) -> str:
    mode = value.strip().lower()
    if mode not in ("auto", "single", "cluster"):
        raise ConfigError(f"{name} must be auto, single or cluster, got {value!r}")
    return mode


def _redis_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ConfigError(
            f"{name} must be a redis://, rediss:// or unix:// URL, got {parts.scheme or value!r}"
        )
    return value


def _secret(name: str, value: str) -> str:
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters long")
    return value


def _auth(name: str, value: str) -> AuthMode:
    try:
        return AuthMode(value.lower())
    except ValueError:
        raise ConfigError(f"{name} must be 'token' or 'off', got {value!r}") from None


def _origins(name: str, value: str) -> frozenset[str]:
    origins = frozenset(normalize(o.strip()) for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                f"{name} must be comma-separated origins such as https://app.example.com, "
                f"got {origin!r}"
            )
    return origins


def _log_level(name: str, value: str) -> str:
    level = value.lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{name} must be debug, info, warning or error, got {value!r}")
    return level
