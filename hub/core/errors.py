"""The hub's exceptions: one root, a few branches, each knowing its HTTP status.

HubError
├── ConfigError          invalid setting; stops the start with one line
└── RequestError         a client's request cannot be served (has `status` and `code`)
    ├── BadRequest       400: malformed body, query, account or stream ID
    ├── Unauthorized     401: no token, or an invalid or expired one
    ├── Forbidden        403: the token lacks the right, or the Origin is not allowed
    ├── RequestTimeout   408: the request body did not arrive in time
    ├── EmailTaken       409: the address is reserved by another account
    ├── UnsupportedMediaType 415: a request body that is not application/json
    ├── IdempotencyConflict  422: an idempotency key reused for another event
    ├── TooManySockets   429: the account holds its most sockets on this process
    ├── Unavailable      503: Redis was not reached; nothing was done, retry later
    ├── TooBusy          503: an admission limit; retry after `retry_after` seconds
    └── OutcomeUnknown   504: a command was sent and no answer came; it may have run
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error the hub raises on purpose."""


class ConfigError(HubError):
    """A setting is missing or invalid; the message names the variable and the expected form."""


class RequestError(HubError):
    """A request the hub refuses; `code` is the stable machine-readable name."""

    status = 400
    code = "bad_request"
    closes_connection = False  # the connection cannot serve another request after this one
    retry_after: int | None = None  # seconds, for a Retry-After header

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(RequestError):
    status = 400
    code = "bad_request"


class Unauthorized(RequestError):
    status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"
    closes_connection = True  # the rest of the body is still unread


class EmailTaken(RequestError):
    status = 409
    code = "email_taken"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class IdempotencyConflict(RequestError):
    status = 422
    code = "idempotency_key_reused"


class TooManySockets(RequestError):
    status = 429
    code = "too_many_sockets"


class Unavailable(RequestError):
    status = 503
    code = "unavailable"


class OutcomeUnknown(RequestError):
    status = 504
    code = "outcome_unknown"


class TooBusy(RequestError):
    status = 503
    code = "too_busy"


class LayoutMismatch(HubError):
    """The cluster's data was written with another number of index shards."""
