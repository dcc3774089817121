"""Which web pages may use the hub, by their `Origin`: sockets, the HTTP API (CORS) and the
`hub_token` cookie. Pure: no I/O.

`HUB_ALLOWED_ORIGINS` lists the other origins allowed; the hub's own origin (the one whose
host is the request's `Host`) is always allowed, and requests without `Origin` (not from a
browser) are not a page's. The cookie is the one credential a browser attaches by itself, so a
request carrying it from a page that is neither allowed nor the hub's own is refused: that is
what stops another site from publishing with a user's cookie (CSRF).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_MAX_AGE = "600"


def normalize(origin: str) -> str:
    """An origin as compared: no trailing slash, scheme and host lower-cased."""
    return origin.rstrip("/").lower()


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    allowed: frozenset[str] | None  # HUB_ALLOWED_ORIGINS (normalized); None when unset

    def is_own(self, origin: str, host: str | None) -> bool:
        """Whether `origin` is the hub's own: its host and port are the request's `Host`."""
        return host is not None and urlsplit(normalize(origin)).netloc == host.lower()

    def is_listed(self, origin: str) -> bool:
        return self.allowed is not None and normalize(origin) in self.allowed

    def may_open_socket(self, origin: str | None, host: str | None) -> bool:
        """Any page while the list is unset; else listed pages and the hub's own."""
        if origin is None or self.allowed is None:
            return True
        return self.is_listed(origin) or self.is_own(origin, host)

    def may_use_cookie(self, origin: str | None, host: str | None) -> bool:
        """The hub's own pages and listed ones (none while the list is unset)."""
        return origin is None or self.is_listed(origin) or self.is_own(origin, host)

    def allows_cors(self, origin: str | None) -> bool:
        """Whether responses to `origin` carry CORS headers: listed origins only (the hub's
        own pages are same-origin and need none)."""
        return origin is not None and self.is_listed(origin)
