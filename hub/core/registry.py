"""Which sockets listen to which account, and how they are woken. Pure: no I/O, no asyncio.

Each session owns a `Signal`. The notifier calls `Registry.wake(accounts)`, which sets the
signal of every session of those accounts. A session *takes* its signal before it reads its
stream and waits only while the signal is not pending, so a wake that lands at any moment
after the take is seen: no wake-up can be lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Signal:
    """A level-triggered wake flag owned by one session.

    `wake` may be called any number of times; the flag stays set until the owner `take`s it.
    `on_wake` lets the I/O shell resume the session; it runs when the flag becomes set, since
    a session whose flag is already set has yet to take it, and its next read covers the new
    wake as well.
    """

    __slots__ = ("_on_wake", "_pending")

    def __init__(self, on_wake: Callable[[], None] | None = None) -> None:
        self._pending = False
        self._on_wake = on_wake

    @property
    def pending(self) -> bool:
        return self._pending

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        if self._on_wake is not None:
            self._on_wake()

    def take(self) -> bool:
        """Clear the flag and say whether it was set. Call it *before* reading."""
        pending, self._pending = self._pending, False
        return pending


class Registry:
    """account → the signals of the sessions listening to it.

    It also keeps a logical clock: `wake` stamps each account with the time of its last wake,
    and `tick` gives readers a time for the moment they start a read. A read started after an
    account's last wake has seen everything that wake announced, so sessions may share it.
    """

    __slots__ = ("_count", "_listeners", "_now", "_woken_at")

    def __init__(self) -> None:
        self._count = 0
        self._listeners: dict[str, set[Signal]] = {}
        self._woken_at: dict[str, int] = {}
        self._now = 0

    def tick(self) -> int:
        """Advance the clock and return the new time (the start of a read)."""
        self._now += 1
        return self._now

    def woken_at(self, account: str) -> int:
        """When the account was last woken (0: never while it had listeners)."""
        return self._woken_at.get(account, 0)

    def register(self, account: str, signal: Signal) -> None:
        signals = self._listeners.setdefault(account, set())
        if signal not in signals:
            signals.add(signal)
            self._count += 1

    def unregister(self, account: str, signal: Signal) -> None:
        """Remove a signal; unknown pairs are ignored so that cleanup can be unconditional."""
        signals = self._listeners.get(account)
        if signals is None or signal not in signals:
            return
        signals.remove(signal)
        self._count -= 1
        if not signals:
            del self._listeners[account]
            self._woken_at.pop(account, None)

    def wake(self, accounts: Iterable[str]) -> int:
        """Wake every session of `accounts`; return how many signals were set."""
        now = self.tick()
        woken = 0
        for account in accounts:
            signals = self._listeners.get(account)
            if signals is None:
                continue
            self._woken_at[account] = now
            for signal in signals:
                signal.wake()
            woken += len(signals)
        return woken

    def wake_all(self) -> int:
        """Wake every registered session: the answer to any doubt about what was missed."""
        return self.wake(list(self._listeners))

    def accounts(self) -> frozenset[str]:
        return frozenset(self._listeners)

    def listeners(self, account: str) -> int:
        return len(self._listeners.get(account, ()))

    def __len__(self) -> int:
        """The number of registered signals."""
        return self._count
