"""Admission limits: refuse work the process cannot take before doing any of it. Pure: the
caller passes the counts and the time.

- `HUB_MAX_SOCKETS`: open subscriptions per process (default 90% of the open-file limit);
- `HUB_MAX_ACCEPT_RATE`: new subscriptions per second per process (a token bucket, burst of
  one second's worth): a reconnect storm is spread instead of taken all at once;
- `HUB_MAX_SOCKETS_PER_ACCOUNT`: one account cannot take every socket;
- `HUB_PUBLISH_RATE`: publishes per second per socket (burst of two seconds' worth).
Each is off at 0.
"""

from __future__ import annotations

import math

from hub.core.errors import TooBusy, TooManySockets


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, now

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token (after a `take` that failed)."""
        return (1 - self._tokens) / self.rate


class Admission:
    """The per-process limits on opening subscriptions."""

    __slots__ = ("_accepts", "max_per_account", "max_sockets")

    def __init__(
        self, *, max_sockets: int, max_accept_rate: float, max_per_account: int, now: float
    ) -> None:
        self.max_sockets, self.max_per_account = max_sockets, max_per_account
        self._accepts = (
            TokenBucket(max_accept_rate, max_accept_rate, now) if max_accept_rate else None
        )

    def admit(self, open_now: int, now: float) -> None:
        """Before anything else: raise `TooBusy` if the process is full or accepting too fast."""
        if self.max_sockets and open_now >= self.max_sockets:
            raise TooBusy(
                f"this hub holds its most sockets ({self.max_sockets}); retry later or elsewhere",
                retry_after=5,
            )
        if self._accepts is not None and not self._accepts.take(now):
            raise TooBusy(
                "this hub is accepting too many sockets at once; retry shortly",
                retry_after=max(1, math.ceil(self._accepts.wait())),
            )

    def admit_account(self, account: str, open_for_account: int) -> None:
        """Once the account is known: raise `TooManySockets` if it holds its most."""
        if self.max_per_account and open_for_account >= self.max_per_account:
            raise TooManySockets(
                f"account {account} already has {self.max_per_account} sockets on this hub"
            )
