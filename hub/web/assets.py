"""The browser's files: the client module, its TypeScript declarations and the demo page.

Read once at import from the package (hub/client/browser/), served from memory. Each response
names its content type and is revalidated by ETag, so a browser keeps its copy until the hub
changes it.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from aiohttp import hdrs, web

routes = web.RouteTableDef()


class Asset:
    """One file of hub/client/browser/, with the content type and ETag it is served with."""

    def __init__(self, name: str, content_type: str) -> None:
        self.body = files("hub.client").joinpath("browser", name).read_bytes()
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def response(self, request: web.Request) -> web.Response:
        headers = {hdrs.ETAG: self.etag, hdrs.CACHE_CONTROL: "no-cache"}
        if self.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=self.body, content_type=self.content_type, charset="utf-8", headers=headers
        )


CLIENT_JS = Asset("client.js", "text/javascript")
CLIENT_DTS = Asset("client.d.ts", "application/typescript")
DEMO = Asset("demo.html", "text/html")


@routes.get("/client.js")
async def client_js(request: web.Request) -> web.Response:
    """The browser client: an ES module with no dependencies (`import {HubClient} from ...`)."""
    return CLIENT_JS.response(request)


@routes.get("/client.d.ts")
async def client_dts(request: web.Request) -> web.Response:
    """TypeScript declarations of /client.js."""
    return CLIENT_DTS.response(request)


@routes.get("/demo")
async def demo(request: web.Request) -> web.Response:
    """A page on /client.js to watch an account live, publish, and see a reconnect resume."""
    return DEMO.response(request)
