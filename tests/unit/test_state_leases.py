"""Unit tests of the per-replica lease index and the core's narrow reads for adapters.

A scrape event about one replica must cost that replica's leases, not the registry's: the
index on each ``Replica`` makes reconciliation touch only them. Adapters read pools
through ``Registry.replica``, ``addresses`` and ``load``, where ``busy`` counts a server's
slots across every pool (what scaling decisions need) and ``in_flight`` one pool's leases.
The hypothesis state machine (test_state_properties.py) checks the index after every step.
"""

from __future__ import annotations

from typing import Any

import pytest

from warmroute.state import (
    EndReason,
    Lease,
    Phase,
    PoolSpec,
    Registry,
    ReplicaExternalLoad,
    ReplicaRemoved,
    ReplicaUpsert,
)
from warmroute.state.ask import Ask

R1 = "10.0.0.1:8000"
R2 = "10.0.0.2:8000"
A = PoolSpec("a", ("ma",), reconcile_after_seconds=5.0)
B = PoolSpec("b", ("mb",), reconcile_after_seconds=5.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScanGuard(dict[Any, Any]):
    """A dict that fails the test when walked while armed (lookups stay allowed)."""

    armed = False

    def _walk(self) -> None:
        if self.armed:
            raise AssertionError("an event walked a whole index")

    def __iter__(self) -> Any:
        self._walk()
        return super().__iter__()

    def values(self) -> Any:
        self._walk()
        return super().values()

    def items(self) -> Any:
        self._walk()
        return super().items()


def make_registry(*specs: PoolSpec) -> tuple[Registry, FakeClock]:
    clock = FakeClock()
    registry = Registry(clock=clock)
    registry.configure(specs or (A, B))
    return registry, clock


def warm(registry: Registry, pool: str, address: str, slots: int) -> None:
    registry.apply(ReplicaUpsert(pool, address, slots, Phase.WARM))


def lease(registry: Registry, pool: str, request_id: str, on: str) -> Lease:
    got = registry.pools[pool].try_acquire(Ask(request_id, eligible=frozenset({on})))
    assert got is not None and got.address == on
    return got


def test_a_replica_indexes_its_pools_leases_in_grant_order_until_they_end() -> None:
    registry, clock = make_registry()
    warm(registry, "a", R1, 3)
    warm(registry, "a", R2, 3)
    first = lease(registry, "a", "r1", R1)
    clock.now = 1.0
    other = lease(registry, "a", "r2", R2)
    clock.now = 2.0
    second = lease(registry, "a", "r3", R1)
    replica = registry.replica("a", R1)
    assert replica is not None
    assert list(replica.leases.values()) == [first, second]
    first.release()
    assert list(replica.leases.values()) == [second]
    second.release(EndReason.CANCELLED)
    assert replica.leases == {} and replica.in_flight == 0
    assert registry.pools["a"].active_leases() == [other]


def test_a_refused_grant_leaves_no_trace_in_the_index() -> None:
    registry, _ = make_registry()
    warm(registry, "a", R1, 1)
    held = lease(registry, "a", "held", R1)
    waiter = registry.pools["a"].enqueue(Ask("gone"), lambda _lease: False)
    held.release()  # the slot is offered to the waiter, which refuses: undone
    replica = registry.replica("a", R1)
    assert replica is not None and replica.leases == {}
    assert waiter.lease is None and registry.leases_on(R1) == []


def test_reconcile_reads_only_the_reporting_replicas_leases() -> None:
    """The event path never walks the registry's lease index nor the pool's replicas."""
    clock = FakeClock()
    registry = Registry(clock=clock)
    guard = ScanGuard()
    registry.leases = guard  # before configure: the pools share this very dict
    registry.configure([A])
    warm(registry, "a", R1, 3)
    warm(registry, "a", R2, 3)
    old = [lease(registry, "a", f"r1-{i}", R1) for i in range(3)]
    on_r2 = [lease(registry, "a", f"r2-{i}", R2) for i in range(2)]
    clock.now = 60.0
    pool = registry.pools["a"]
    replicas = ScanGuard(pool.replicas)
    pool.replicas = replicas
    guard.armed = replicas.armed = True
    try:
        reclaimed = pool.set_external(R1, 1, reconcile=True)
        registry.apply(ReplicaExternalLoad("a", R2, 2, reconcile=True))
    finally:
        guard.armed = replicas.armed = False
    assert reclaimed == old[:2]  # the oldest go first
    assert [x.ended for x in old] == [EndReason.RECONCILED, EndReason.RECONCILED, None]
    assert all(x.ended is None for x in on_r2)
    assert set(registry.leases) == {old[2].id, *(x.id for x in on_r2)}


def test_reconcile_spares_leases_too_young_to_have_reached_the_replica() -> None:
    registry, clock = make_registry()
    warm(registry, "a", R1, 3)
    old = lease(registry, "a", "old", R1)
    clock.now = 10.0
    young = lease(registry, "a", "young", R1)
    clock.now = 12.0  # young is 2 s old: maybe still on its way
    reclaimed = registry.pools["a"].set_external(R1, 0, reconcile=True)
    assert reclaimed == [old] and young.ended is None
    assert registry.leases_on(R1) == [young]


def test_leases_on_an_address_span_every_pool_retired_ones_included() -> None:
    registry, _ = make_registry()
    warm(registry, "a", R1, 4)
    warm(registry, "b", R1, 4)
    in_a = lease(registry, "a", "a-0", R1)
    in_b = lease(registry, "b", "b-0", R1)
    registry.configure([B])  # a retires with its lease in flight
    assert {x.id for x in registry.leases_on(R1)} == {in_a.id, in_b.id}
    assert registry.leases_on(R2) == []
    in_a.release()
    assert registry.leases_on(R1) == [in_b]
    # The end-of-request lookups still find what is active, and only that.
    assert registry.lease(in_b.id) is in_b and registry.lease(in_a.id) is None
    assert registry.lease_for_request("b-0") is in_b
    assert registry.lease_for_request("a-0") is None


def test_expire_reclaims_overdue_leases_and_empties_their_replicas_index() -> None:
    spec = PoolSpec("a", ("ma",), max_request_seconds=10.0, lease_grace_seconds=1.0)
    registry, clock = make_registry(spec)
    warm(registry, "a", R1, 2)
    overdue = lease(registry, "a", "r1", R1)
    clock.now = 5.0
    fresh = lease(registry, "a", "r2", R1)
    clock.now = 11.0
    assert registry.expire() == [overdue]
    assert overdue.ended is EndReason.EXPIRED
    assert registry.leases_on(R1) == [fresh]


def test_a_removed_replica_keeps_its_index_until_its_last_lease_ends() -> None:
    registry, _ = make_registry()
    warm(registry, "a", R1, 2)
    held = lease(registry, "a", "r1", R1)
    registry.apply(ReplicaRemoved("a", R1))
    assert registry.addresses("a") == []  # GONE is not live
    assert registry.addresses("a", live_only=False) == [R1]
    assert registry.leases_on(R1) == [held]
    held.release()
    assert registry.replica("a", R1) is None
    assert registry.addresses("a", live_only=False) == []
    assert registry.capacity(R1) is None


@pytest.mark.parametrize(
    ("b_leases", "external", "busy"),
    [
        pytest.param(0, 0, 1, id="own-lease"),
        pytest.param(2, 0, 3, id="another-pool-leases-the-same-server"),
        pytest.param(1, 1, 3, id="plus-load-we-did-not-lease"),
    ],
)
def test_load_counts_a_servers_busy_slots_across_pools(
    b_leases: int, external: int, busy: int
) -> None:
    """A's in_flight is its own lease; busy is the GPU's, whoever leased it."""
    registry, _ = make_registry()
    warm(registry, "a", R1, 4)
    warm(registry, "b", R1, 4)
    registry.apply(ReplicaUpsert("a", R2, 2, Phase.LOADING))
    lease(registry, "a", "a-0", R1)
    for i in range(b_leases):
        lease(registry, "b", f"b-{i}", R1)
    if external:
        registry.apply(ReplicaExternalLoad("a", R1, 1 + b_leases + external))
    load = registry.load("a")
    assert load is not None
    by_address = {r.address: r for r in load.replicas}
    assert (by_address[R1].in_flight, by_address[R1].busy) == (1, busy)
    assert (by_address[R2].phase, by_address[R2].busy) == (Phase.LOADING, 0)
    assert (load.in_flight, load.busy, load.waiting) == (1, busy, 0)
    assert (load.slots_in(Phase.WARM), load.slots_in(Phase.LOADING)) == (4, 2)
    view = {p.name: p for p in registry.view().pools}
    assert (view["a"].in_flight, view["a"].busy) == (1, busy)


def test_load_counts_waiters_and_unknown_pools_read_as_nothing() -> None:
    registry, _ = make_registry()
    warm(registry, "a", R1, 1)
    lease(registry, "a", "r1", R1)
    registry.pools["a"].enqueue(Ask("r2"), lambda _lease: True)
    load = registry.load("a")
    assert load is not None and load.waiting == 1
    assert registry.load("nope") is None
    assert registry.pool_names() == ["a", "b"]
    registry.configure([B])  # a retires (its waiter is still queued): not listed
    assert registry.pool_names() == ["b"] and registry.load("a") is None
    assert registry.addresses("nope") == []
    assert registry.replica("nope", R1) is None and registry.replica("a", R2) is None
