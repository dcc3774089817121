"""Every Redis key name the hub uses, built in one place.

The first four are the seed tutorial's data model; `hub:index` and the epoch key are the
hub's own. A sharded (Redis Cluster) layout would change only this module.
"""

from __future__ import annotations

import hashlib

INDEX = "hub:index"
ACCOUNT_SEQUENCE = "account_id"


def account_log(account: str) -> str:
    """The account's event stream, fields `type` and `payload`."""
    return f"account:{account}:log"


def account_epoch(account: str) -> str:
    """The account's epoch: set once, lost only if Redis loses the account's data."""
    return f"account:{account}:epoch"


def email(address: str) -> str:
    """The reservation of a (lower-cased) email address, holding the account ID."""
    return f"email:{address}"


def idempotency(account: str, publisher: str, key: str) -> str:
    """A publish's idempotency key, holding the ID (and digest) of the event first published
    with it. Keys are a publisher's own (the token's subject), so that two publishers' keys
    never collide; any key maps to a fixed-length name of safe characters."""
    scoped = f"{publisher}\0{key}".encode("utf-8", "surrogatepass")
    return f"account:{account}:idempotency:{hashlib.sha256(scoped).hexdigest()[:32]}"
