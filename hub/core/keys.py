"""Every Redis key name the hub uses, built in one place.

On a single Redis node the names are the seed tutorial's (`account:{id}:log`, `account_id`,
`email:{address}`) plus the hub's own `hub:index` and epoch keys. On a Redis Cluster the index
is split into shards, and each account's keys carry the hash tag of its shard (`{h3}`), so that
the publish script's keys share one slot: publishing stays one atomic script. An outside
producer finds an account's shard as CRC-32 (IEEE, of the account ID's UTF-8 bytes) modulo the
number of shards.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

ACCOUNT_SEQUENCE = "account_id"
LAYOUT = "hub:layout"
"""Where a cluster deployment records its layout, so that a hub configured with another
number of shards refuses to start instead of looking for every account in the wrong place."""


def email(address: str) -> str:
    """The reservation of a (lower-cased) email address, holding the account ID."""
    return f"email:{address}"


@dataclass(frozen=True, slots=True)
class Layout:
    """The key names of one deployment: `shards` is 0 on a single node (the seed's names)."""

    shards: int = 0

    @property
    def clustered(self) -> bool:
        return self.shards > 0

    @property
    def signature(self) -> str:
        """What `LAYOUT` holds for this layout."""
        return f"shards={self.shards}"

    def shard_of(self, account: str) -> int:
        """The index shard an account's events are announced on (always 0 on a single node)."""
        if not self.shards:
            return 0
        return zlib.crc32(account.encode("utf-8", "surrogatepass")) % self.shards

    def index_shards(self) -> range:
        return range(max(self.shards, 1))

    def index(self, shard: int = 0) -> str:
        """An index stream, fields `account` and `id`: one entry per published event."""
        return f"hub:index:{{h{shard}}}" if self.shards else "hub:index"

    def _account(self, account: str) -> str:
        if not self.shards:
            return f"account:{account}"
        return f"account:{account}:{{h{self.shard_of(account)}}}"

    def account_log(self, account: str) -> str:
        """The account's event stream, fields `type` and `payload`."""
        return f"{self._account(account)}:log"

    def account_epoch(self, account: str) -> str:
        """The account's epoch: set once, lost only if Redis loses the account's data."""
        return f"{self._account(account)}:epoch"

    def idempotency(self, account: str, publisher: str, key: str) -> str:
        """A publish's idempotency key, holding the ID (and digest) of the event first
        published with it. Keys are a publisher's own (the token's subject), so that two
        publishers' keys never collide; any key maps to a fixed-length name of safe
        characters."""
        scoped = f"{publisher}\0{key}".encode("utf-8", "surrogatepass")
        return self.idempotency_by_digest(account, hashlib.sha256(scoped).hexdigest()[:32])

    def idempotency_by_digest(self, account: str, digest: str) -> str:
        """An idempotency key's name from the digest its name ends with (a migration)."""
        return f"{self._account(account)}:idempotency:{digest}"


SINGLE = Layout()
"""The single-node layout: the seed's key names."""


_SEED_ACCOUNT_KEY = re.compile(
    r"account:(?P<account>[^:{}]+):(?P<kind>log|epoch|idempotency:(?P<digest>[0-9a-f]{32}))"
)


@dataclass(frozen=True, slots=True)
class AccountKey:
    """What a single node's account key names: `kind` is log, epoch or idempotency."""

    account: str
    kind: str
    digest: str = ""

    def on(self, layout: Layout) -> str:
        """The same key's name in `layout`."""
        if self.kind == "log":
            return layout.account_log(self.account)
        if self.kind == "epoch":
            return layout.account_epoch(self.account)
        return layout.idempotency_by_digest(self.account, self.digest)


def parse_single(name: str) -> AccountKey | None:
    """The account key a single node's key name is, or None for any other name."""
    found = _SEED_ACCOUNT_KEY.fullmatch(name)
    if found is None:
        return None
    kind = found["kind"].partition(":")[0]
    return AccountKey(found["account"], kind, found["digest"] or "")


SEED_ACCOUNT_KEYS = "account:*"
SEED_EMAILS = "email:*"
"""SCAN patterns of a single node's account keys and email reservations."""
