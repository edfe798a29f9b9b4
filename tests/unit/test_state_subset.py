"""Subset-aware leasing (EPP subset hints): picks, waiting, dispatch order, limits.

A request may carry an eligible set of replica addresses; these tests pin that leases land
only inside it, that a freed slot goes to the oldest waiter that may use it, and that the
queue's bound, cancellation and timeouts treat subset waiters like any other.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from tests.unit.test_state_pool import Env, Requester, make_env, state_of
from warmroute.errors import QueueFull
from warmroute.state import (
    EndReason,
    Lease,
    Phase,
    PoolSpec,
    ReplicaExternalLoad,
    ReplicaRemoved,
    ReplicaUpsert,
    Waiter,
    WaitState,
)
from warmroute.state.ask import Ask
from warmroute.state.waiters import WaitQueue


def subset(*addresses: str) -> frozenset[str]:
    return frozenset(addresses)


def acquire_in(env: Env, request_id: str, *addresses: str) -> Lease:
    lease = env.pool().try_acquire(Ask(request_id, eligible=subset(*addresses)))
    assert lease is not None, f"no lease for {request_id} in {addresses}"
    return lease


def wait_in(env: Env, request_id: str, requester: Requester, *addresses: str) -> Waiter:
    return env.pool().enqueue(
        Ask(request_id, eligible=subset(*addresses) if addresses else None),
        requester.on_grant,
        on_timeout=requester.on_timeout,
    )


def granted_address(waiter: Waiter) -> str | None:
    return waiter.lease.address if waiter.lease is not None else None


# -- immediate picks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "eligible", "expected"),
    [
        pytest.param({"a": 1, "b": 1, "c": 1}, ("b",), ["b"], id="one-address"),
        pytest.param({"a": 1, "b": 1, "c": 1}, ("a", "c"), ["a", "c"], id="two-of-three"),
        pytest.param({"a": 2, "b": 2, "c": 1}, ("b", "c"), ["b", "c", "b"], id="least-loaded"),
        pytest.param({"a": 1}, ("a", "x", "y"), ["a"], id="unknown-addresses-ignored"),
        pytest.param({"a": 1, "b": 1}, ("x",), [], id="nothing-known"),
        pytest.param({"a": 1, "b": 1}, (), [], id="empty-subset"),
    ],
)
def test_a_subset_request_is_leased_only_inside_its_subset(
    replicas: dict[str, int], eligible: tuple[str, ...], expected: list[str]
) -> None:
    env = make_env()
    for address, slots in replicas.items():
        env.warm(address, slots)
    got = []
    for i in range(len(expected)):
        env.clock.advance(1.0)
        got.append(acquire_in(env, f"r{i}", *eligible).address)
    assert got == expected
    assert env.pool().try_acquire(Ask("one-too-many", eligible=subset(*eligible))) is None
    # Replicas outside the subset are untouched and still free for anyone.
    outside = [a for a in replicas if a not in eligible]
    assert all(env.pool().replicas[a].in_flight == 0 for a in outside)
    if outside:
        assert env.pool().try_acquire(Ask("anyone")) is not None


@pytest.mark.parametrize("phase", [Phase.LOADING, Phase.DRAINING, Phase.GONE])
def test_a_subset_of_replicas_that_are_not_warm_gets_no_lease(phase: Phase) -> None:
    env = make_env()
    env.warm("a")
    env.registry.apply(ReplicaUpsert("p", "b", 1, phase))
    assert env.pool().try_acquire(Ask("r", eligible=subset("b"))) is None
    assert acquire_in(env, "r", "a", "b").address == "a"


def test_first_free_picks_the_first_replica_of_the_subset_in_pool_order() -> None:
    env = make_env(PoolSpec("p", ("m",), policy="first_free"))
    for address in ("a", "b", "c", "d"):
        env.warm(address, 2)
    # The subset's own order (a set) never matters: the pool's order does.
    assert [acquire_in(env, f"r{i}", "d", "b", "c").address for i in range(5)] == [
        "b",
        "b",
        "c",
        "c",
        "d",
    ]


def test_external_load_counts_inside_a_subset() -> None:
    env = make_env()
    env.warm("a", 2)
    env.warm("b", 2)
    env.registry.apply(ReplicaExternalLoad("p", "b", 2))
    assert env.pool().try_acquire(Ask("r", eligible=subset("b"))) is None
    assert acquire_in(env, "r", "a", "b").address == "a"


# -- can_ever_serve ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "eligible", "expected"),
    [
        pytest.param({}, None, True, id="no-subset-empty-pool"),
        pytest.param({"a": Phase.DRAINING}, None, True, id="no-subset-draining-pool"),
        pytest.param({"a": Phase.WARM}, (), False, id="empty-subset"),
        pytest.param({"a": Phase.WARM}, ("x", "y"), False, id="no-known-address"),
        pytest.param({}, ("a",), False, id="empty-pool"),
        pytest.param({"a": Phase.WARM}, ("a",), True, id="warm"),
        pytest.param({"a": Phase.LOADING}, ("a",), True, id="loading"),
        pytest.param({"a": Phase.DRAINING}, ("a",), False, id="draining"),
        pytest.param({"a": Phase.GONE}, ("a",), False, id="gone"),
        pytest.param(
            {"a": Phase.DRAINING, "b": Phase.LOADING}, ("a", "b"), True, id="one-may-serve"
        ),
        pytest.param(
            {"a": Phase.DRAINING, "b": Phase.WARM}, ("a", "x"), False, id="the-warm-one-is-out"
        ),
        pytest.param(
            {"a": Phase.GONE, "b": Phase.WARM},
            ("a", "b", "c", "d", "e"),
            True,
            id="subset-larger-than-pool",
        ),
        pytest.param(
            {"a": Phase.GONE, "b": Phase.WARM},
            ("a", "c", "d", "e"),
            False,
            id="subset-larger-than-pool-none-serves",
        ),
    ],
)
def test_can_ever_serve(
    replicas: dict[str, Phase], eligible: tuple[str, ...] | None, expected: bool
) -> None:
    env = make_env()
    for address, phase in replicas.items():
        env.registry.apply(ReplicaUpsert("p", address, 1, phase))
    assert env.pool().can_ever_serve(None if eligible is None else subset(*eligible)) is expected


def test_a_busy_replica_can_still_serve_and_a_removed_one_cannot() -> None:
    env = make_env()
    env.warm("a")
    lease = env.acquire()
    assert env.pool().can_ever_serve(subset("a"))  # busy, but it will free up
    env.registry.apply(ReplicaRemoved("p", "a"))
    assert "a" in env.pool().replicas  # lingers while its lease runs
    assert not env.pool().can_ever_serve(subset("a"))
    assert lease.release()
    assert not env.pool().can_ever_serve(subset("a"))


# -- waiting and dispatch ----------------------------------------------------------------------


def test_enqueue_grants_at_once_only_inside_the_subset() -> None:
    env = make_env()
    env.warm("a")
    env.warm("b")
    acquire_in(env, "held", "b")
    blocked = wait_in(env, "blocked", Requester(), "b")
    assert blocked.state is WaitState.WAITING
    assert env.pool().replicas["a"].free == 1  # free, but not for it
    served = wait_in(env, "served", Requester(), "a", "b")
    assert served.state is WaitState.GRANTED
    assert granted_address(served) == "a"
    assert list(env.pool().queue) == [blocked]


# Each case: replicas (all one slot, all held at the start), waiters as (name, subset or None)
# in arrival order, then the replicas released one at a time; expected: who got each slot.
DISPATCH_CASES = [
    pytest.param(
        ["a", "b"],
        [("w1", ("a",)), ("w2", ("b",)), ("w3", ("a",))],
        ["b", "a", "a"],
        [("b", "w2"), ("a", "w1"), ("a", "w3")],
        id="skip-a-waiter-the-slot-does-not-suit",
    ),
    pytest.param(
        ["a", "b"],
        [("w1", ("a",)), ("w2", None), ("w3", ("b",))],
        ["b", "b", "a"],
        [("b", "w2"), ("b", "w3"), ("a", "w1")],
        id="unrestricted-waiter-is-served-in-its-turn",
    ),
    pytest.param(
        ["a", "b"],
        [("w1", None), ("w2", ("a",)), ("w3", ("b",))],
        ["b", "a", "b"],
        [("b", "w1"), ("a", "w2"), ("b", "w3")],
        id="an-older-unrestricted-waiter-goes-first",
    ),
    pytest.param(
        ["a", "b", "c"],
        [("w1", ("a", "b")), ("w2", ("b", "c")), ("w3", ("a", "c")), ("w4", ("c",))],
        ["c", "c", "b", "a"],
        [("c", "w2"), ("c", "w3"), ("b", "w1"), ("a", None)],
        id="overlapping-subsets",
    ),
    pytest.param(
        ["a", "b"],
        [("w1", ("b",)), ("w2", ("b",))],
        ["a", "b", "b"],
        [("a", None), ("b", "w1"), ("b", "w2")],
        id="a-slot-nobody-may-use-stays-free",
    ),
]


@pytest.mark.parametrize(("replicas", "waiters", "frees", "expected"), DISPATCH_CASES)
def test_a_freed_slot_goes_to_the_oldest_waiter_that_may_use_it(
    replicas: list[str],
    waiters: list[tuple[str, tuple[str, ...] | None]],
    frees: list[str],
    expected: list[tuple[str, str | None]],
) -> None:
    env = make_env()
    holding: dict[str, list[Lease]] = {}
    for address in replicas:
        env.warm(address)
        holding[address] = [acquire_in(env, f"held-{address}", address)]
    queued: dict[str, Waiter] = {}
    for name, eligible in waiters:
        queued[name] = wait_in(env, name, Requester(), *(eligible or ()))
        assert queued[name].state is WaitState.WAITING
    got: list[tuple[str, str | None]] = []
    for address in frees:
        before = {n for n, w in queued.items() if w.state is WaitState.GRANTED}
        assert holding[address].pop(0).release()
        now = {n for n, w in queued.items() if w.state is WaitState.GRANTED}
        [*new] = now - before
        assert len(new) <= 1
        winner = new[0] if new else None
        if winner is not None:
            lease = queued[winner].lease
            assert lease is not None and lease.address == address
            holding[address].append(lease)
        got.append((address, winner))
    assert got == expected


def test_a_new_request_takes_a_slot_no_queued_waiter_may_use() -> None:
    env = make_env()
    env.warm("a")
    env.warm("b")
    acquire_in(env, "held", "b")
    waiter = wait_in(env, "w", Requester(), "b")
    # "a" is free and nobody queued may use it: a newcomer, with or without subset, takes it.
    lease = env.pool().try_acquire(Ask("new"))
    assert lease is not None and lease.address == "a"
    assert env.pool().try_acquire(Ask("new2")) is None
    assert env.pool().try_acquire(Ask("new3", eligible=subset("b"))) is None
    assert waiter.state is WaitState.WAITING


def test_a_new_request_never_overtakes_a_waiter_for_the_same_replica() -> None:
    env = make_env()
    env.warm("a")
    held = acquire_in(env, "held", "a")
    requester = Requester()
    waiter = wait_in(env, "w", requester, "a")
    assert env.pool().try_acquire(Ask("late", eligible=subset("a"))) is None
    late = wait_in(env, "late", Requester(), "a")
    assert held.release()
    assert state_of(waiter) is WaitState.GRANTED
    assert late.state is WaitState.WAITING


def test_a_refused_grant_passes_the_slot_to_the_next_eligible_waiter() -> None:
    env = make_env()
    env.warm("a")
    env.warm("b")
    held_a = acquire_in(env, "held-a", "a")
    acquire_in(env, "held-b", "b")
    gone = wait_in(env, "gone", Requester(alive=False), "a")
    other = wait_in(env, "other", Requester(), "b")
    live = wait_in(env, "live", Requester(), "a", "b")
    assert held_a.release()
    assert gone.state is WaitState.CANCELLED
    assert other.state is WaitState.WAITING
    assert live.state is WaitState.GRANTED
    assert granted_address(live) == "a"
    assert env.pool().replicas["a"].in_flight == 1
    assert list(env.pool().queue) == [other]


def test_turning_warm_serves_each_waiter_whose_subset_it_is_in() -> None:
    env = make_env()
    env.registry.apply(ReplicaUpsert("p", "a", 2, Phase.LOADING))
    env.registry.apply(ReplicaUpsert("p", "b", 1, Phase.LOADING))
    waiters = [
        wait_in(env, "w1", Requester(), "b"),
        wait_in(env, "w2", Requester(), "a"),
        wait_in(env, "w3", Requester()),
        wait_in(env, "w4", Requester(), "a"),
        wait_in(env, "w5", Requester(), "b"),
    ]
    env.registry.apply(ReplicaUpsert("p", "a", 2, Phase.WARM))
    assert [granted_address(w) for w in waiters] == [None, "a", "a", None, None]
    env.registry.apply(ReplicaUpsert("p", "b", 1, Phase.WARM))
    assert [granted_address(w) for w in waiters] == ["b", "a", "a", None, None]
    assert [w.request_id for w in env.pool().queue] == ["w4", "w5"]


# -- bound, cancellation, timeout --------------------------------------------------------------


def test_queue_full_counts_every_waiter_whatever_its_subset() -> None:
    env = make_env(PoolSpec("p", ("m",), max_waiting=3))
    first = wait_in(env, "w1", Requester(), "a")
    wait_in(env, "w2", Requester(), "b")
    wait_in(env, "w3", Requester())
    for eligible in (("a",), ("c",), ()):
        with pytest.raises(QueueFull):
            wait_in(env, "over", Requester(), *eligible)
    assert len(env.pool().queue) == 3
    assert env.pool().counters.rejected_queue_full == 3
    assert env.registry.view().pools[0].waiting == 3
    assert env.pool().cancel(first)
    wait_in(env, "w4", Requester(), "c")
    assert len(env.pool().queue) == 3


def test_a_cancelled_subset_waiter_is_skipped_and_never_served() -> None:
    env = make_env()
    env.warm("a")
    held = acquire_in(env, "held", "a")
    quitter, stayer = Requester(), Requester()
    w_quit = wait_in(env, "quit", quitter, "a")
    w_stay = wait_in(env, "stay", stayer, "a")
    assert env.pool().cancel(w_quit) is True
    assert env.pool().cancel(w_quit) is False
    assert w_quit.state is WaitState.CANCELLED
    assert env.pool().queue.restricted == 1
    assert held.release()
    assert quitter.offered == []
    assert state_of(w_stay) is WaitState.GRANTED
    assert env.pool().cancel(w_stay) is False
    assert env.pool().queue.restricted == 0
    assert env.pool().counters.waits_cancelled == 1


def test_subset_waiters_time_out_in_arrival_order() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0))
    requesters = [Requester() for _ in range(4)]
    waiters = [
        wait_in(env, "w0", requesters[0], "a"),
        wait_in(env, "w1", requesters[1]),
        wait_in(env, "w2", requesters[2], "b"),
        wait_in(env, "w3", requesters[3], "a"),
    ]
    assert list(env.pool().queue) == waiters
    env.clock.advance(5.0)
    assert env.pool().expire_waiters(env.clock()) == waiters
    assert [r.timeouts for r in requesters] == [1, 1, 1, 1]
    assert len(env.pool().queue) == 0 and env.pool().queue.restricted == 0
    env.warm("a")
    assert all(r.offered == [] for r in requesters)


def test_mark_timed_out_on_a_subset_waiter_is_once() -> None:
    env = make_env()
    requester = Requester()
    waiter = wait_in(env, "w", requester, "a")
    assert env.pool().mark_timed_out(waiter) is True
    assert env.pool().mark_timed_out(waiter) is False
    assert env.pool().cancel(waiter) is False
    assert requester.timeouts == 0
    env.warm("a")
    assert requester.offered == []
    assert env.pool().replicas["a"].free == 1


def test_a_waiter_whose_replicas_all_vanish_waits_then_times_out() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0))
    env.warm("a")
    env.warm("b")
    held = acquire_in(env, "held", "a")
    requester = Requester()
    waiter = wait_in(env, "w", requester, "a")
    env.registry.apply(ReplicaRemoved("p", "a"))
    assert not env.pool().can_ever_serve(subset("a"))
    assert held.release()  # the gone replica's slot is not reused
    assert waiter.state is WaitState.WAITING
    assert env.pool().replicas.keys() == {"b"}
    env.clock.advance(5.0)
    env.registry.expire()
    assert state_of(waiter) is WaitState.TIMED_OUT
    assert (requester.offered, requester.timeouts) == ([], 1)


def test_a_waiter_is_served_if_its_replica_comes_back_in_time() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0))
    env.warm("a")
    held = acquire_in(env, "held", "a")
    waiter = wait_in(env, "w", Requester(), "a")
    env.registry.apply(ReplicaRemoved("p", "a"))
    assert held.release()
    assert "a" not in env.pool().replicas
    env.clock.advance(4.0)
    env.warm("a")
    assert state_of(waiter) is WaitState.GRANTED
    assert granted_address(waiter) == "a"


def test_subset_leases_end_like_any_other() -> None:
    env = make_env()
    env.warm("a")
    lease = acquire_in(env, "r", "a")
    assert lease.release(EndReason.CANCELLED)
    assert not lease.release()
    assert env.pool().counters.cancelled_leases == 1
    assert env.pool().replicas["a"].in_flight == 0


# -- cost -------------------------------------------------------------------------------------


def calls_made(fn: Callable[[], object]) -> int:
    """Python and C function calls made by ``fn()``: a deterministic measure of its cost."""
    count = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    # A garbage collection inside fn() would run other objects' finalizers and count their
    # calls (seen in the full suite, never alone): collect first, keep it off while counting.
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return count


@pytest.mark.parametrize(
    "backlog_subset",
    [pytest.param(None, id="backlog-unrestricted"), pytest.param(("b",), id="backlog-one-subset")],
)
def test_a_release_costs_the_same_whatever_the_backlog_it_cannot_serve(
    backlog_subset: tuple[str, ...] | None,
) -> None:
    """Waiters sharing a set are skipped as a group: no scan over them, one by one."""
    costs = []
    for backlog in (10, 1000):
        env = make_env(PoolSpec("p", ("m",), max_waiting=2000))
        env.warm("a")
        env.warm("b")
        held = acquire_in(env, "held-a", "a")
        acquire_in(env, "held-b", "b")
        if backlog_subset is None:
            waiter = wait_in(env, "first", Requester(), "a")
        for i in range(backlog):
            wait_in(env, f"w{i}", Requester(), *(backlog_subset or ()))
        if backlog_subset is not None:
            waiter = wait_in(env, "last", Requester(), "a")
        costs.append(calls_made(held.release))
        assert state_of(waiter) is WaitState.GRANTED
    assert costs[0] == costs[1]


# -- the queue itself --------------------------------------------------------------------------


def _waiter(name: str, *eligible: str) -> Waiter:
    return Waiter(name, 0.0, 1.0, lambda lease: True, None, subset(*eligible) if eligible else None)


def test_wait_queue_keeps_arrival_order_across_subsets() -> None:
    q = WaitQueue()
    w = [_waiter("0", "a"), _waiter("1"), _waiter("2", "b"), _waiter("3", "a"), _waiter("4")]
    for x in w:
        q.push(x)
    assert (len(q), q.restricted) == (5, 3)
    assert list(q) == w
    assert q.head() is w[0]
    assert q.head_unrestricted() is w[1]
    assert sorted((sorted(e), h.request_id) for e, h in q.subset_heads()) == [
        (["a"], "0"),
        (["b"], "2"),
    ]
    assert q.remove(w[2]) and not q.remove(w[2])
    assert q.pop() is w[0]
    assert [x.request_id for x in q] == ["1", "3", "4"]
    assert q.remove(w[3])
    assert q.restricted == 0
    assert list(q) == [w[1], w[4]]
    assert q.pop() is w[1] and q.pop() is w[4]
    assert len(q) == 0 and q.head() is None
    with pytest.raises(KeyError):
        q.pop()


def test_wait_queue_refuses_a_waiter_it_does_not_hold() -> None:
    q, other = WaitQueue(), WaitQueue()
    stranger, stranger_any = _waiter("s", "a"), _waiter("t")
    other.push(stranger)
    other.push(stranger_any)
    q.push(_waiter("mine", "a"))
    assert not q.remove(stranger)
    assert not q.remove(stranger_any)
    assert not q.remove(_waiter("nobody", "zzz"))
    assert (len(q), q.restricted) == (1, 1)
    assert len(other) == 2
