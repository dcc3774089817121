"""Serving the app: aiohttp's runner, with errors before routing answered the hub's way.

aiohttp answers a request it cannot parse (a header line over 8 KiB, a bad method, a broken
chunked body) itself, before any route or hook runs: in plain text, logging a traceback whose
message quotes the offending bytes — a token, if that is what the long header held. The hub's
connection handler answers those in JSON like every other error and logs the error's kind
only. `serve` runs the hub until SIGINT or SIGTERM, then drains.

What it assumes of aiohttp (pinned in pyproject.toml, checked by tests/test_hostile.py): a
runner's `_make_server` returns the `web.Server` whose call makes one `RequestHandler` per
connection from its `_loop` and `_kwargs`, and that handler answers unparsable requests and
unhandled exceptions through `handle_error(request, status, exc, message)`.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from hub.aio import StopSignals
from hub.config import Settings
from hub.core.errors import HubError
from hub.logs import AccessLogger

LISTEN_BACKLOG = 4096  # connection bursts: the default 128 drops SYNs, costing clients 1 s
_ERRORS = {
    400: ("bad_request", "the request could not be parsed as HTTP"),
    431: ("headers_too_large", "a request header line exceeds 8190 bytes"),
    500: ("internal", "an internal error occurred"),
    504: ("timeout", "the request took too long"),
}

log = structlog.get_logger(__name__)


class _RequestHandler(RequestHandler):
    """One connection's handler; only its error answers differ from aiohttp's."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong):
            status = 431
        if status >= 500:
            log.error("request_failed", path=request.path, status=status, exc_info=exc)
        else:
            # Never the exception's message: it quotes the request's bytes.
            log.info("request_unparsable", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started: no error answer can follow")
        code, text = _ERRORS.get(status, ("bad_request", "the request was refused"))
        response = web.Response(
            status=status,
            body=orjson.dumps({"error": code, "message": text}),
            content_type="application/json",
            headers={"Server": "hub"},
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class HubRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer errors before routing in JSON."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app's own server, with its arguments
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def runner(app: web.Application, settings: Settings, **kwargs: Any) -> HubRunner:
    return HubRunner(
        app,
        access_log_class=AccessLogger,
        shutdown_timeout=settings.shutdown_grace,
        **kwargs,
    )


async def serve(app: web.Application, settings: Settings, *, reuse_port: bool = False) -> int:
    """Serve until SIGINT or SIGTERM, then drain; the signal's number. A failure to start
    raises HubError. `reuse_port`: one of several workers on the port (hub/supervisor.py)."""
    signals = StopSignals()
    hub = runner(app, settings)
    try:
        await hub.setup()
        site = web.TCPSite(
            hub, settings.host, settings.port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port
        )
        try:
            await site.start()
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise HubError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
        received = await signals.wait()
        log.info("hub_stopping", signal=signal.Signals(received).name)
    finally:
        await hub.cleanup()
    return received
