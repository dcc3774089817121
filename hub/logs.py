"""Logging: structlog everywhere, JSON lines when stderr is not a terminal.

The access log prints the path only: a query string may carry `?token=`.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Set up structlog once for the process; `json=None` picks JSON unless on a TTY."""
    as_json = not sys.stderr.isatty() if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if as_json:
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


class _NoOfferedSubprotocols(logging.Filter):
    """Drops aiohttp's warning that lists a client's offered subprotocols: a browser offers
    its token as one (`bearer.<token>`), and no log line may hold a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("%s: Client protocols")


_SUBPROTOCOL_FILTER = _NoOfferedSubprotocols()


def keep_tokens_out_of_aiohttp_logs() -> None:
    """Install the filter above on aiohttp's WebSocket logger (once; any number of calls)."""
    logger = logging.getLogger("aiohttp.websocket")
    if _SUBPROTOCOL_FILTER not in logger.filters:
        logger.addFilter(_SUBPROTOCOL_FILTER)


class AccessLogger(AbstractAccessLogger):
    """One structured line per request, without the query string (it may hold a token)."""

    _log = structlog.get_logger("hub.access")

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self._log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 2),
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        """Off below info level: aiohttp then skips the call altogether."""
        return bool(self._log.is_enabled_for(logging.INFO))
