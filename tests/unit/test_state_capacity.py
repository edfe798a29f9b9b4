"""Unit tests of address-wide capacity: one server's slots are one truth across pools.

The scenario of issue 13: a config reload moves replica R from pool A to pool B while A's
requests still run on it. B must not lease R beyond its slots, and the moment A's lease
ends, B's waiter gets R. Fake clock, no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from warmroute.state import (
    Lease,
    Phase,
    PoolSpec,
    Registry,
    ReplicaExternalLoad,
    ReplicaRemoved,
    ReplicaUpsert,
    WaitState,
)
from warmroute.state.ask import Ask

R = "10.0.0.1:8000"
A = PoolSpec("a", ("ma",))
B = PoolSpec("b", ("mb",))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Requester:
    offered: list[Lease] = field(default_factory=list)

    def on_grant(self, lease: Lease) -> bool:
        self.offered.append(lease)
        return True


def make_registry(*specs: PoolSpec) -> tuple[Registry, FakeClock]:
    clock = FakeClock()
    registry = Registry(clock=clock)
    registry.configure(specs or (A, B))
    return registry, clock


def warm(registry: Registry, pool: str, slots: int, address: str = R) -> None:
    registry.apply(ReplicaUpsert(pool, address, slots, Phase.WARM))


def fill(registry: Registry, pool: str, n: int) -> list[Lease]:
    leases = [registry.pools[pool].try_acquire(Ask(f"{pool}-{i}")) for i in range(n)]
    assert all(lease is not None for lease in leases)
    return [lease for lease in leases if lease is not None]


def move(registry: Registry, slots: int, *, to: str = "b", phase: Phase = Phase.WARM) -> None:
    """What discovery emits when a reload lists R in pool ``to`` instead of pool a."""
    registry.apply(ReplicaRemoved("a", R))
    registry.apply(ReplicaUpsert(to, R, slots, phase))


@pytest.mark.parametrize(
    ("slots", "busy_in_a", "free_in_b"),
    [
        pytest.param(1, 1, 0, id="one-slot-busy"),
        pytest.param(2, 2, 0, id="full"),
        pytest.param(2, 1, 1, id="half-busy"),
        pytest.param(4, 3, 1, id="one-left"),
        pytest.param(3, 0, 3, id="idle-move"),
    ],
)
def test_moved_replica_keeps_the_first_pools_leases_against_its_slots(
    slots: int, busy_in_a: int, free_in_b: int
) -> None:
    registry, _ = make_registry()
    warm(registry, "a", slots)
    leases_a = fill(registry, "a", busy_in_a)
    move(registry, slots)
    b = registry.pools["b"]
    granted = fill(registry, "b", free_in_b)
    assert b.try_acquire(Ask("one-too-many")) is None
    capacity = registry.capacity(R)
    assert capacity is not None
    assert capacity.leased == busy_in_a + free_in_b <= slots
    # A keeps its busy replica (GONE) only while its leases run.
    assert ("a" in {p.name for p in capacity.members}) is (busy_in_a > 0)
    for lease in [*leases_a, *granted]:
        lease.release()
    assert registry.capacity(R) is capacity and capacity.leased == 0
    assert list(capacity.members) == [b]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_waiter_in_the_new_pool_gets_the_slot_the_moment_the_old_lease_ends(slots: int) -> None:
    registry, _ = make_registry()
    warm(registry, "a", slots)
    leases_a = fill(registry, "a", slots)
    move(registry, slots)
    b = registry.pools["b"]
    requester = Requester()
    waiter = b.enqueue(Ask("b-waits"), requester.on_grant)
    assert waiter.state is WaitState.WAITING and requester.offered == []
    assert leases_a[0].release() is True
    # Dispatched inside the release of another pool's lease: no tick, no event needed.
    assert waiter.state is WaitState.GRANTED
    [lease] = requester.offered
    assert lease.pool is b and lease.address == R
    capacity = registry.capacity(R)
    assert capacity is not None and capacity.leased == slots


def test_removed_pool_keeps_its_leases_against_the_address_until_they_end() -> None:
    registry, clock = make_registry()
    warm(registry, "a", 1)
    [lease_a] = fill(registry, "a", 1)
    registry.configure([B])  # pool a retired with its lease in flight
    old_a = lease_a.pool
    assert registry.retired == (old_a,)
    warm(registry, "b", 1)
    b = registry.pools["b"]
    assert b.try_acquire(Ask("b-0")) is None
    requester = Requester()
    waiter = b.enqueue(Ask("b-1"), requester.on_grant)
    clock.now += 1.0
    registry.expire()
    assert registry.retired == (old_a,) and waiter.state is WaitState.WAITING
    lease_a.release()
    assert waiter.state is WaitState.GRANTED
    registry.expire()  # the idle retired pool is forgotten, and leaves the address
    assert registry.retired == ()
    capacity = registry.capacity(R)
    assert capacity is not None and list(capacity.members) == [b]


@pytest.mark.parametrize(
    ("a_slots", "b_slots", "leasable"),
    [
        pytest.param(4, 2, 2, id="b-smaller"),
        pytest.param(2, 4, 2, id="a-smaller"),
        pytest.param(3, 3, 3, id="agree"),
    ],
)
def test_when_pools_disagree_on_slots_the_smaller_wins(
    a_slots: int, b_slots: int, leasable: int
) -> None:
    registry, _ = make_registry()
    warm(registry, "a", a_slots)
    warm(registry, "b", b_slots)
    leases = fill(registry, "a", 1) + fill(registry, "b", 1)
    while (lease := registry.pools["a"].try_acquire(Ask("more"))) is not None:
        leases.append(lease)
    assert registry.pools["b"].try_acquire(Ask("more")) is None
    assert len(leases) == leasable


def test_a_gone_replica_stops_bounding_the_address_and_wakes_the_other_pool() -> None:
    registry, _ = make_registry()
    warm(registry, "a", 1)
    warm(registry, "b", 3)
    [lease_a] = fill(registry, "a", 1)
    requester = Requester()
    waiter = registry.pools["b"].enqueue(Ask("b-0"), requester.on_grant)
    assert waiter.state is WaitState.WAITING  # a says 1 slot, and a holds it
    registry.apply(ReplicaRemoved("a", R))  # a's figure is stale now: b's 3 slots rule
    assert waiter.state is WaitState.GRANTED
    capacity = registry.capacity(R)
    assert capacity is not None and (capacity.leased, capacity.slots) == (2, 3)
    lease_a.release()


@pytest.mark.parametrize(
    ("waiting_in_a", "served"),
    [
        pytest.param(True, "a", id="releasing-pool-first"),
        pytest.param(False, "b", id="then-the-others"),
    ],
)
def test_a_shared_address_freed_in_one_pool_serves_the_other(
    waiting_in_a: bool, served: str
) -> None:
    registry, _ = make_registry()
    warm(registry, "a", 1)
    warm(registry, "b", 1)
    [lease] = fill(registry, "a", 1)
    requesters = {name: Requester() for name in ("b", "a")}
    waiters = {
        name: registry.pools[name].enqueue(Ask(f"{name}-w"), requesters[name].on_grant)
        for name in ("b", "a")
        if name == "b" or waiting_in_a
    }
    lease.release()
    assert [name for name, w in waiters.items() if w.state is WaitState.GRANTED] == [served]


def test_external_load_and_reconcile_count_every_pools_leases() -> None:
    registry, clock = make_registry()
    warm(registry, "a", 4)
    warm(registry, "b", 4)
    fill(registry, "a", 1)
    [lease_b] = fill(registry, "b", 1)
    registry.apply(ReplicaExternalLoad("a", R, 3))
    a_replica = registry.pools["a"].replicas[R]
    assert a_replica.external == 1  # 3 running, 2 of them ours (one per pool)
    clock.now += 60.0
    # The server runs 1: one lease's end was lost. Only the reporting pool's are reclaimed.
    reclaimed = registry.pools["a"].set_external(R, 1, reconcile=True)
    assert len(reclaimed) == 1 and reclaimed[0].pool.name == "a"
    assert lease_b.ended is None
    capacity = registry.capacity(R)
    assert capacity is not None and capacity.leased == 1


def test_more_slots_in_one_pool_wake_the_other_pools_waiters() -> None:
    registry, _ = make_registry()
    warm(registry, "a", 1)
    warm(registry, "b", 2)
    [lease_a] = fill(registry, "a", 1)
    requester = Requester()
    waiter = registry.pools["b"].enqueue(Ask("b-0"), requester.on_grant)
    assert waiter.state is WaitState.WAITING  # the smaller figure (a's 1) rules
    warm(registry, "a", 3)  # now b's 2 is the smaller: one slot is free, and b's
    assert waiter.state is WaitState.GRANTED
    lease_a.release()


def test_forgetting_an_idle_retired_pool_frees_the_slots_it_bounded() -> None:
    registry, clock = make_registry()
    warm(registry, "a", 1)
    warm(registry, "b", 2)
    [lease_a] = fill(registry, "a", 1)
    registry.configure([B])  # a is retired; its replica still says 1 slot
    requester = Requester()
    waiter = registry.pools["b"].enqueue(Ask("b-0"), requester.on_grant)
    assert waiter.state is WaitState.WAITING
    lease_a.release()  # a's replica is WARM, not GONE: it still bounds R to 1 slot
    assert waiter.state is WaitState.GRANTED
    waiter_2 = registry.pools["b"].enqueue(Ask("b-1"), requester.on_grant)
    assert waiter_2.state is WaitState.WAITING
    clock.now += 1.0
    registry.expire()  # a is idle: forgotten, R's slots are b's 2
    assert registry.retired == ()
    assert waiter_2.state is WaitState.GRANTED


def test_view_shows_address_wide_free_slots_in_every_pool() -> None:
    """What /v1/models and status pages read: a slot A holds is not free in B's view."""
    registry, _ = make_registry()
    registry.apply(ReplicaUpsert("a", R, 2, Phase.WARM))
    registry.apply(ReplicaUpsert("b", R, 2, Phase.WARM))
    lease = registry.pools["a"].try_acquire(Ask("r1"))
    assert lease is not None
    free = {p.name: [r.free for r in p.replicas] for p in registry.view().pools}
    assert free == {"a": [1], "b": [1]}
    lease.release()
    free = {p.name: [r.free for r in p.replicas] for p in registry.view().pools}
    assert free == {"a": [2], "b": [2]}
