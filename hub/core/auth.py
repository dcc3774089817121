"""Tokens and rights: HS256 JWTs with `sub`, `exp` and an optional `pub`. No I/O.

`pub` is `"*"` (publish anywhere, read any history, create accounts) or a list of the account
IDs the bearer may publish to. Opening `/ws/{id}` needs `sub == id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from hub.core.errors import BadRequest, Forbidden, Unauthorized
from hub.core.ids import validate_account_id

ALGORITHM = "HS256"
MAX_EXPIRY = 253_402_300_799  # 9999-12-31T23:59:59Z: beyond it a timer cannot be set
EVERYWHERE = "*"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token allows. `expires_at` is a Unix time; None never expires."""

    subject: str | None
    expires_at: int | None
    publish_to: frozenset[str] = frozenset()
    publish_everywhere: bool = False
    unrestricted: bool = False  # HUB_AUTH=off: the seed's trust-the-path mode

    def may_open(self, account: str) -> bool:
        return self.unrestricted or self.subject == account

    def may_publish(self, account: str) -> bool:
        return self.unrestricted or self.publish_everywhere or account in self.publish_to

    def may_read_history(self, account: str) -> bool:
        return self.unrestricted or self.publish_everywhere or self.subject == account

    def may_create_accounts(self) -> bool:
        return self.unrestricted or self.publish_everywhere


UNRESTRICTED = Claims(subject=None, expires_at=None, unrestricted=True)


def require(allowed: bool, what: str) -> None:
    if not allowed:
        raise Forbidden(f"the token does not allow {what}")


def verify(token: str, secret: str, now: float) -> Claims:
    """Check signature, expiry and claim shapes; raise Unauthorized with a safe message."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"], "verify_exp": False},
        )
    except jwt.PyJWTError as error:
        raise Unauthorized(f"invalid token: {error}", code="invalid_token") from None
    exp = claims["exp"]
    if (
        not isinstance(exp, int | float)
        or isinstance(exp, bool)
        or not -MAX_EXPIRY <= exp <= MAX_EXPIRY  # also false for NaN
    ):
        raise Unauthorized(
            "invalid token: 'exp' must be a Unix time before the year 10000", code="invalid_token"
        )
    if exp <= now:
        raise Unauthorized("the token has expired", code="token_expired")
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise Unauthorized("invalid token: 'sub' must be a string", code="invalid_token")
    publish = claims.get("pub", [])
    if publish == EVERYWHERE:
        return Claims(subject, int(exp), publish_everywhere=True)
    if not isinstance(publish, list) or not all(isinstance(a, str) for a in publish):
        raise Unauthorized(
            "invalid token: 'pub' must be \"*\" or a list of account IDs", code="invalid_token"
        )
    return Claims(subject, int(exp), publish_to=frozenset(publish))


def parse_publish_list(text: str) -> list[str] | str:
    """The CLI's `--publish` value: `*` or comma-separated account IDs."""
    if text.strip() == EVERYWHERE:
        return EVERYWHERE
    accounts = [part.strip() for part in text.split(",") if part.strip()]
    for account in accounts:
        validate_account_id(account)
    if not accounts:
        raise BadRequest("--publish needs '*' or a comma-separated list of account IDs")
    return accounts


def mint(
    secret: str, subject: str, now: float, ttl: float, publish: Iterable[str] | str = ()
) -> str:
    """A signed token for `subject`, valid for `ttl` seconds (negative: already expired)."""
    validate_account_id(subject)
    payload: dict[str, object] = {"sub": subject, "exp": int(now + ttl), "iat": int(now)}
    if publish == EVERYWHERE:
        payload["pub"] = EVERYWHERE
    else:
        accounts = list(publish)
        if accounts:
            payload["pub"] = accounts
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
