"""The registry and its signals: pure, synchronous, no I/O."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from hub.core.registry import Registry, Signal

accounts = st.sampled_from(["a", "b", "c", "d", "e"])


def test_wake_sets_only_the_signals_of_the_named_accounts() -> None:
    registry = Registry()
    a1, a2, b = Signal(), Signal(), Signal()
    registry.register("a", a1)
    registry.register("a", a2)
    registry.register("b", b)

    assert registry.wake(["a", "zzz"]) == 2

    assert (a1.pending, a2.pending, b.pending) == (True, True, False)


def test_take_clears_and_reports() -> None:
    signal = Signal()
    assert signal.take() is False
    signal.wake()
    signal.wake()
    assert signal.take() is True
    assert signal.take() is False


def test_on_wake_is_called_when_the_signal_becomes_pending() -> None:
    calls: list[int] = []
    signal = Signal(lambda: calls.append(1))
    signal.wake()
    signal.wake()  # already pending: the owner's next read covers this wake too
    assert len(calls) == 1
    signal.take()
    signal.wake()
    assert len(calls) == 2


def test_unregister_forgets_empty_accounts_and_ignores_unknown_pairs() -> None:
    registry = Registry()
    signal = Signal()
    registry.register("a", signal)
    registry.unregister("a", Signal())
    registry.unregister("zzz", signal)
    assert registry.listeners("a") == 1
    registry.unregister("a", signal)
    assert registry.accounts() == frozenset()
    assert len(registry) == 0


def test_wake_all_wakes_every_registered_signal() -> None:
    registry = Registry()
    signals = [Signal() for _ in range(5)]
    for index, signal in enumerate(signals):
        registry.register(str(index % 2), signal)
    assert registry.wake_all() == 5
    assert all(signal.pending for signal in signals)


@given(
    st.lists(st.tuples(accounts, st.integers(0, 3)), max_size=30),
    st.lists(accounts, max_size=10),
)
def test_every_woken_signal_belongs_to_an_account_that_got_an_event(
    registrations: list[tuple[str, int]], woken_accounts: list[str]
) -> None:
    registry = Registry()
    owners: dict[Signal, str] = {}
    pool: dict[tuple[str, int], Signal] = {}
    for account, slot in registrations:
        signal = pool.setdefault((account, slot), Signal())
        owners[signal] = account
        registry.register(account, signal)

    registry.wake(woken_accounts)

    for signal, account in owners.items():
        assert signal.pending == (account in woken_accounts)


@given(st.lists(st.tuples(st.booleans(), accounts, st.integers(0, 2)), max_size=40))
def test_registry_matches_a_model_under_any_register_unregister_sequence(
    operations: list[tuple[bool, str, int]],
) -> None:
    registry = Registry()
    signals = {(account, slot): Signal() for account in "abcde" for slot in range(3)}
    model: dict[str, set[Signal]] = {}
    for add, account, slot in operations:
        signal = signals[(account, slot)]
        if add:
            registry.register(account, signal)
            model.setdefault(account, set()).add(signal)
        else:
            registry.unregister(account, signal)
            model.get(account, set()).discard(signal)
    expected = {account for account, members in model.items() if members}
    assert registry.accounts() == expected
    assert len(registry) == sum(len(members) for members in model.values())


# --- no lost wake-up: every interleaving of a session and a producer -------------------------
#
# A model of the signal protocol alone; tests/test_model.py drives the real engine.
#
# The session's protocol (hub/engine/session.py): take the signal, read everything after its cursor,
# then wait only while the signal is not pending. The producer appends an event to the stream,
# then the notifier wakes the account. Whatever the interleaving, the session must end up
# having read the event.

SESSION_STEPS = ("take", "read", "wait")
PRODUCER_STEPS = ("append", "wake")


def _interleavings() -> list[tuple[str, ...]]:
    steps = len(SESSION_STEPS) + len(PRODUCER_STEPS)
    result = []
    for positions in itertools.combinations(range(steps), len(SESSION_STEPS)):
        session, producer = iter(SESSION_STEPS), iter(PRODUCER_STEPS)
        result.append(
            tuple(next(session) if i in positions else next(producer) for i in range(steps))
        )
    return result


def _run(order: tuple[str, ...]) -> bool:
    registry = Registry()
    signal = Signal()
    registry.register("a", signal)
    stream: list[str] = []
    delivered: list[str] = []
    cursor = 0
    for step in order:
        if step == "append":
            stream.append("event")
        elif step == "wake":
            registry.wake(["a"])
        elif step == "take":
            signal.take()
        elif step == "read":
            delivered.extend(stream[cursor:])
            cursor = len(stream)
    # "wait" returns at once when the signal is pending; the session then takes and reads again.
    if signal.take():
        delivered.extend(stream[cursor:])
    # A waiting session whose signal is not pending sleeps until the next wake.
    return delivered == ["event"]


def test_no_interleaving_loses_the_wake_up() -> None:
    orders = _interleavings()
    assert len(orders) == 10
    for order in orders:
        assert _run(order), f"event lost with order {order}"
