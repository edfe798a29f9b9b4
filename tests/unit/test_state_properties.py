"""Stateful property test of the leasing core.

Hypothesis drives random sequences of acquire, wait, release (sometimes twice), cancel,
requesters going away, time passing, replica phase changes, removals, external load,
reconfiguration, pools added and removed (retired with leases and waiters in flight) and
replicas moved between pools while busy, against a Registry with one to three pools that
share addresses, and checks the invariants documented in ``warmroute/state/pool.py`` after
every step. Requests may carry an eligible set (an EPP subset hint), including empty ones
and addresses no pool knows; retired pools take requests too.

Capacity is checked per address, counted independently of the code under test: the
active leases on an address across every pool never exceed the address's slots as they
were when the newest of them was granted (the smallest figure any live pool's non-GONE
replica reported), and no waiter of any pool waits while a WARM replica it may use has
an address-wide free slot.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from warmroute.errors import QueueFull
from warmroute.state import (
    EndReason,
    Lease,
    Phase,
    Pool,
    PoolSpec,
    Registry,
    ReplicaExternalLoad,
    ReplicaRemoved,
    ReplicaUpsert,
    Waiter,
    WaitState,
)
from warmroute.state.ask import Ask

ADDRESSES = tuple(f"10.0.0.{i}:8000" for i in range(5))
POLICIES = ("least_loaded", "first_free")

indexes = st.integers(min_value=0, max_value=99)
subsets = st.none() | st.frozensets(st.sampled_from(ADDRESSES), max_size=3)
slot_counts = st.integers(min_value=1, max_value=3)
pool_params = st.tuples(
    st.integers(min_value=0, max_value=4),  # max_waiting
    st.sampled_from([1.0, 3.0, 10.0]),  # queue_timeout
    st.sampled_from([5.0, 20.0, 100.0]),  # max_request_seconds
    st.sampled_from(POLICIES),
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"lease-{self.n}"


@dataclass(eq=False)
class Tracked:
    """One request that went to wait, and everything that happened to it."""

    pool: Pool
    alive: bool
    order: int  # arrival order among all tracked requests
    eligible: frozenset[str] | None = None
    waiter: Waiter | None = None
    offered: list[Lease] = field(default_factory=list)
    accepted: Lease | None = None
    timeouts: int = 0
    cancelled_by_us: bool = False
    marked_timed_out: bool = False
    first_exit: WaitState | None = None

    @property
    def w(self) -> Waiter:
        assert self.waiter is not None
        return self.waiter


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.registry = Registry(clock=self.clock, new_id=Ids())
        self.names: list[str] = []
        self.requests = 0
        self.active: dict[str, Lease] = {}  # leases granted and accepted, not yet ended
        self.ended: list[Lease] = []
        self.ends: Counter[str] = Counter()  # lease id -> times we saw it end
        self.accepted_by_pool: Counter[str] = Counter()
        self.ended_by_pool: Counter[str] = Counter()
        self.rejected_by_pool: Counter[str] = Counter()
        self.tracked: list[Tracked] = []
        self.removed: set[tuple[Pool, str]] = set()
        self.violations: list[str] = []
        self.specs: dict[str, PoolSpec] = {}  # the configured pools, in order
        self.pools_made = 0
        self.made: dict[str, Pool] = {}  # every pool ever configured (names are never reused)
        self.slots_at_grant: dict[str, int] = {}  # lease id -> its address's slots then

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _spec(name: str, i: int, param: tuple[int, float, float, str]) -> PoolSpec:
        max_waiting, queue_timeout, max_request_seconds, policy = param
        return PoolSpec(
            name,
            (f"m{i}",),
            max_waiting=max_waiting,
            queue_timeout=queue_timeout,
            max_request_seconds=max_request_seconds,
            policy=policy,
        )

    def _pool(self, i: int) -> Pool:
        return self.registry.pools[self.names[i % len(self.names)]]

    def _live_pools(self) -> list[Pool]:
        """Configured pools, then retired ones still holding leases or waiters."""
        return [*(self.registry.pools[n] for n in self.names), *self.registry.retired]

    def _any_pool(self, i: int) -> Pool:
        pools = self._live_pools()
        return pools[i % len(pools)]

    def _slots_of(self, address: str) -> int | None:
        """The address's slots by the documented rule, from the replicas themselves."""
        mine = [p.replicas[address] for p in self._live_pools() if address in p.replicas]
        live = [r.slots for r in mine if r.phase is not Phase.GONE] or [r.slots for r in mine]
        return min(live) if live else None

    def _leased_on(self, address: str) -> int:
        """Active leases on ``address`` in every pool. Inside a release, the lease being
        released is still in ``active`` but already ended: it does not count."""
        return sum(
            lease.address == address and lease.ended is None for lease in self.active.values()
        )

    def _free_on(self, pool: Pool, address: str) -> bool:
        r = pool.replicas[address]
        slots = self._slots_of(address)
        assert slots is not None
        return r.phase is Phase.WARM and self._leased_on(address) + r.external < slots

    def _configure(self) -> None:
        self.registry.configure(self.specs.values())
        self.names = list(self.specs)
        for name in self.names:
            self.made.setdefault(name, self.registry.pools[name])

    def _new_pool(self, param: tuple[int, float, float, str]) -> None:
        i = self.pools_made
        self.pools_made += 1
        self.specs[f"p{i}"] = self._spec(f"p{i}", i, param)

    def _replicas(self) -> list[tuple[Pool, str]]:
        """Every known replica, in a stable order, so rules can target one that exists."""
        pools = [self.registry.pools[name] for name in self.names]
        return [(p, address) for p in pools for address in sorted(p.replicas)]

    def _check_grant(
        self, lease: Lease, eligible: frozenset[str] | None, order: float = float("inf")
    ) -> None:
        """At the moment of a grant: a warm replica in the eligible set, within its slots,
        indexed, and no waiter that arrived before ``order`` could have used it instead."""
        r = lease.replica
        if eligible is not None and r.address not in eligible:
            self.violations.append(f"{lease} granted outside {sorted(eligible)}")
        for t in self.tracked:
            if (
                t.pool is lease.pool
                and t.order < order
                and t.w.state is WaitState.WAITING
                and (t.eligible is None or r.address in t.eligible)
            ):
                self.violations.append(f"{lease} overtook {t.w}, which could use {r}")
        if r.phase is not Phase.WARM:
            self.violations.append(f"{lease} granted on {r}")
        if r.in_flight > r.slots or r.in_flight + r.external > r.slots:
            self.violations.append(f"{lease} overbooks {r}")
        # Address-wide: this lease plus every other pool's on the same server.
        on_address = 1 + self._leased_on(r.address)
        slots = self._slots_of(r.address)
        if slots is None or on_address + r.external > slots:
            self.violations.append(f"{lease} overbooks {r.address}: {on_address} on {slots}")
        if r.capacity.leased != on_address:
            self.violations.append(f"{lease}: capacity says {r.capacity}, {on_address} leased")
        self.slots_at_grant[lease.id] = slots or 0
        if lease.pool.replicas.get(r.address) is not r:
            self.violations.append(f"{lease} granted on a replica its pool forgot")
        if lease.ended is not None or self.registry.leases.get(lease.id) is not lease:
            self.violations.append(f"{lease} not active when granted")
        if lease.id in self.ends:
            self.violations.append(f"lease id {lease.id} reused")

    def _accept(self, lease: Lease) -> None:
        self.active[lease.id] = lease
        self.ends[lease.id] = 0
        self.accepted_by_pool[lease.pool.name] += 1

    def _ended(self, lease: Lease) -> None:
        self.ends[lease.id] += 1
        self.active.pop(lease.id, None)
        self.ended.append(lease)
        self.ended_by_pool[lease.pool.name] += 1

    def _on_grant(self, t: Tracked, lease: Lease) -> bool:
        self._check_grant(lease, t.eligible, t.order)
        t.offered.append(lease)
        if t.alive:
            t.accepted = lease
            self._accept(lease)
        return t.alive

    def _on_timeout(self, t: Tracked) -> None:
        t.timeouts += 1

    # -- rules -------------------------------------------------------------------------------

    @initialize(params=st.lists(pool_params, min_size=1, max_size=2))
    def configure(self, params: list[tuple[int, float, float, str]]) -> None:
        for param in params:
            self._new_pool(param)
        self._configure()

    @rule(
        pool=indexes,
        alive=st.booleans(),
        skip_try=st.booleans(),
        timeout=st.none() | st.sampled_from([0.5, 2.0, 50.0]),
        eligible=subsets,
    )
    def acquire(
        self,
        pool: int,
        alive: bool,
        skip_try: bool,
        timeout: float | None,
        eligible: frozenset[str] | None,
    ) -> None:
        p = self._any_pool(pool)
        self.requests += 1
        request_id = f"req-{self.requests}"
        if not skip_try:
            queued = len(p.queue)
            lease = p.try_acquire(Ask(request_id, eligible=eligible))
            if lease is not None:
                # _check_grant also checks that no queued waiter could have used it.
                assert queued == 0 or p.queue.restricted, "a new request overtook a queued one"
                self._check_grant(lease, eligible)
                self._accept(lease)
                return
            assert not any(
                r.free or self._free_on(p, r.address)
                for r in p.replicas.values()
                if eligible is None or r.address in eligible
            )
        t = Tracked(p, alive, self.requests, eligible)
        queued = len(p.queue)
        try:
            t.waiter = p.enqueue(
                Ask(request_id, eligible=eligible),
                partial(self._on_grant, t),
                timeout=timeout,
                on_timeout=partial(self._on_timeout, t),
            )
        except QueueFull:
            assert queued >= p.spec.max_waiting
            self.rejected_by_pool[p.name] += 1
            return
        assert queued < p.spec.max_waiting
        self.tracked.append(t)

    @rule(
        pool=indexes,
        n=st.integers(min_value=2, max_value=6),
        alive=st.booleans(),
        eligible=st.lists(subsets, min_size=1, max_size=3),
    )
    def burst(self, pool: int, n: int, alive: bool, eligible: list[frozenset[str] | None]) -> None:
        """Several requests at once: fills replicas and queues faster than single steps."""
        for i in range(n):
            self.acquire(
                pool, alive, skip_try=False, timeout=None, eligible=eligible[i % len(eligible)]
            )

    def _shared(self) -> list[tuple[int, int, str]]:
        """(pool, other pool, address) for each address two live pools list."""
        pools = self._live_pools()
        return [
            (i, j, address)
            for i, p in enumerate(pools)
            for j, q in enumerate(pools)
            if i != j
            for address in sorted(p.replicas)
            if address in q.replicas
        ]

    @precondition(lambda self: bool(self._shared()))
    @rule(i=indexes, n=st.integers(min_value=1, max_value=4), pinned=st.booleans())
    def contend(self, i: int, n: int, pinned: bool) -> None:
        """Load a shared address from one pool, then ask for it in the other: the case a
        random walk rarely builds (a move, or two pools that list one server)."""
        shared = self._shared()
        p, q, address = shared[i % len(shared)]
        only = frozenset({address})
        for _ in range(n):
            self.acquire(p, alive=True, skip_try=False, timeout=None, eligible=only)
        self.acquire(q, alive=True, skip_try=False, timeout=None, eligible=only if pinned else None)

    @rule(pool=indexes, eligible=subsets)
    def can_ever_serve(self, pool: int, eligible: frozenset[str] | None) -> None:
        p = self._pool(pool)
        expected = eligible is None or any(
            a in p.replicas and p.replicas[a].phase in (Phase.WARM, Phase.LOADING) for a in eligible
        )
        assert p.can_ever_serve(eligible) is expected

    @precondition(lambda self: bool(self.active))
    @rule(
        i=indexes,
        twice=st.booleans(),
        reason=st.sampled_from([EndReason.FINISHED, EndReason.CANCELLED, EndReason.REVOKED]),
    )
    def release(self, i: int, twice: bool, reason: EndReason) -> None:
        leases = list(self.active.values())
        lease = leases[i % len(leases)]
        assert lease.release(reason) is True
        self._ended(lease)
        assert lease.ended is reason
        if twice:
            assert lease.release() is False

    @precondition(lambda self: bool(self.ended))
    @rule(i=indexes)
    def release_again(self, i: int) -> None:
        lease = self.ended[i % len(self.ended)]
        before = lease.ended
        assert lease.release() is False
        assert lease.ended is before

    @precondition(lambda self: bool(self.tracked))
    @rule(i=indexes)
    def cancel(self, i: int) -> None:
        t = self.tracked[i % len(self.tracked)]
        was_waiting = t.w.state is WaitState.WAITING
        assert t.pool.cancel(t.w) is was_waiting
        if was_waiting:
            t.cancelled_by_us = True
            assert t.w.state is WaitState.CANCELLED

    @precondition(lambda self: bool(self.tracked))
    @rule(i=indexes)
    def mark_timed_out(self, i: int) -> None:
        t = self.tracked[i % len(self.tracked)]
        was_waiting = t.w.state is WaitState.WAITING
        assert t.pool.mark_timed_out(t.w) is was_waiting
        if was_waiting:
            t.marked_timed_out = True
            assert t.w.state is WaitState.TIMED_OUT

    @precondition(lambda self: bool(self.tracked))
    @rule(i=indexes)
    def requester_goes_away(self, i: int) -> None:
        """The client left but nobody cancelled: the grant will be refused."""
        self.tracked[i % len(self.tracked)].alive = False

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0]))
    def tick(self, dt: float) -> None:
        self._advance_to(self.clock.now + dt)

    def _advance_to(self, now: float) -> None:
        self.clock.now = now
        before = set(self.active)
        waiting = [t for t in self.tracked if t.w.state is WaitState.WAITING]
        overdue = self.registry.expire()
        assert len({lease.id for lease in overdue}) == len(overdue)
        for lease in overdue:
            assert lease.id in before
            assert lease.deadline <= now
            assert lease.ended is EndReason.EXPIRED
            self._ended(lease)
        assert all(lease.deadline > now for lease in self.active.values())
        for t in waiting:
            if t.w.deadline <= now:
                # Overdue waiters time out; a slot freed by expiry never goes to one.
                assert t.w.state is WaitState.TIMED_OUT, f"{t.w} overdue after expire()"

    @precondition(lambda self: bool(self.active) or bool(self.tracked))
    @rule(past=st.booleans())
    def tick_to_next_deadline(self, past: bool) -> None:
        """Jump exactly to (or just past) the next lease or waiter deadline."""
        deadlines = [lease.deadline for lease in self.active.values()]
        deadlines += [t.w.deadline for t in self.tracked if t.w.state is WaitState.WAITING]
        if deadlines:
            self._advance_to(max(self.clock.now, min(deadlines) + (0.5 if past else 0.0)))

    @rule(pool=indexes, address=st.sampled_from(ADDRESSES), slots=slot_counts)
    def add_warm(self, pool: int, address: str, slots: int) -> None:
        p = self._pool(pool)
        self.registry.apply(ReplicaUpsert(p.name, address, slots, Phase.WARM))
        self.removed.discard((p, address))

    @rule(
        pool=indexes,
        address=st.sampled_from(ADDRESSES),
        slots=slot_counts,
        phase=st.sampled_from(list(Phase)),
    )
    def upsert(self, pool: int, address: str, slots: int, phase: Phase) -> None:
        p = self._pool(pool)
        self.registry.apply(ReplicaUpsert(p.name, address, slots, phase))
        self.removed.discard((p, address))
        r = p.replicas[address]
        assert (r.slots, r.phase) == (slots, phase)

    @precondition(lambda self: bool(self._replicas()))
    @rule(i=indexes, slots=slot_counts, phase=st.sampled_from(list(Phase)))
    def change_phase(self, i: int, slots: int, phase: Phase) -> None:
        replicas = self._replicas()
        p, address = replicas[i % len(replicas)]
        self.upsert(self.names.index(p.name), address, slots, phase)

    @precondition(lambda self: bool(self._replicas()))
    @rule(i=indexes)
    def remove(self, i: int) -> None:
        replicas = self._replicas()
        p, address = replicas[i % len(replicas)]
        self.registry.apply(ReplicaRemoved(p.name, address))
        self.removed.add((p, address))

    @precondition(lambda self: bool(self._replicas()) and len(self.names) > 1)
    @rule(
        i=indexes,
        to=indexes,
        slots=slot_counts,
        phase=st.sampled_from([Phase.WARM, Phase.WARM, Phase.LOADING]),
    )
    def move_replica(self, i: int, to: int, slots: int, phase: Phase) -> None:
        """A reload lists a (maybe busy) replica in another pool: discovery removes it
        from the first pool and adds it to the second, in that order."""
        replicas = self._replicas()
        p, address = replicas[i % len(replicas)]
        others = [name for name in self.names if name != p.name]
        q = self.registry.pools[others[to % len(others)]]
        self.registry.apply(ReplicaRemoved(p.name, address))
        self.removed.add((p, address))
        self.registry.apply(ReplicaUpsert(q.name, address, slots, phase))
        self.removed.discard((q, address))

    @precondition(lambda self: len(self.names) > 1)
    @rule(i=indexes)
    def remove_pool(self, i: int) -> None:
        """A reload drops a pool: it is retired with its leases and waiters in flight."""
        pool = self._pool(i)
        del self.specs[pool.name]
        self._configure()
        assert pool.name not in self.registry.pools
        assert pool in self.registry.retired or pool.idle

    @precondition(lambda self: len(self.names) < 3)
    @rule(param=pool_params)
    def add_pool(self, param: tuple[int, float, float, str]) -> None:
        self._new_pool(param)
        self._configure()

    @precondition(lambda self: any(p.replicas[a].external for p, a in self._replicas()))
    @rule(i=indexes)
    def external_load_ends(self, i: int) -> None:
        """A replica's outside traffic finishes: its slots must go to waiters at once."""
        loaded = [(p, a) for p, a in self._replicas() if p.replicas[a].external]
        p, address = loaded[i % len(loaded)]
        r = p.replicas[address]
        # The server runs exactly the leases of every pool on it.
        self.registry.apply(ReplicaExternalLoad(p.name, address, self._leased_on(address)))
        assert r.external == 0

    @precondition(lambda self: bool(self._replicas()))
    @rule(i=indexes, running=st.integers(min_value=0, max_value=4))
    def external_load(self, i: int, running: int) -> None:
        replicas = self._replicas()
        p, address = replicas[i % len(replicas)]
        r = p.replicas[address]
        ours = self._leased_on(address)
        self.registry.apply(ReplicaExternalLoad(p.name, address, running))
        # ``running`` counts the server's whole load: every pool's leases included.
        assert r.external == max(0, running - ours)

    @rule(params=st.lists(pool_params, min_size=3, max_size=3))
    def reconfigure(self, params: list[tuple[int, float, float, str]]) -> None:
        """Change every pool's limits and policy in place."""
        before = dict(self.registry.pools)
        for name, param in zip(list(self.specs), params, strict=False):
            self.specs[name] = self._spec(name, int(name[1:]), param)
        self._configure()
        assert self.registry.pools == before
        for name in self.names:
            assert self.registry.pool_for_model(f"m{name[1:]}") is before[name]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def grants_were_valid(self) -> None:
        assert self.violations == []

    @invariant()
    def registry_leases_are_exactly_the_active_ones(self) -> None:
        assert set(self.registry.leases) == set(self.active)
        for lease_id, lease in self.active.items():
            assert self.registry.leases[lease_id] is lease
            assert lease.ended is None
        assert self.registry.view().leases == len(self.active)

    @invariant()
    def every_lease_ends_at_most_once(self) -> None:
        assert all(n <= 1 for n in self.ends.values())
        assert all(lease.ended is not None for lease in self.ended)

    @invariant()
    def in_flight_counts_active_leases(self) -> None:
        on: Counter[int] = Counter(id(lease.replica) for lease in self.active.values())
        for pool in self._live_pools():
            for r in pool.replicas.values():
                assert r.in_flight == on[id(r)], r
        for lease in self.active.values():
            # A replica with a lease in flight is never forgotten.
            assert lease.pool.replicas.get(lease.address) is lease.replica
            assert lease.pool in self._live_pools()

    @invariant()
    def lease_index_is_the_active_leases_by_replica(self) -> None:
        """Each replica's lease index holds exactly its pool's active leases on it, in
        grant order, so events read one replica's leases and never scan the registry; per
        address and per pool, the indexes add up to the active leases there."""
        by_replica: dict[int, list[str]] = {}
        by_address: dict[str, set[str]] = {}
        by_pool: dict[int, set[str]] = {}
        for lease in self.active.values():  # in grant order
            by_replica.setdefault(id(lease.replica), []).append(lease.id)
            by_address.setdefault(lease.address, set()).add(lease.id)
            by_pool.setdefault(id(lease.pool), set()).add(lease.id)
        for pool in self._live_pools():
            for r in pool.replicas.values():
                assert list(r.leases) == by_replica.get(id(r), []), r
                assert all(lease.replica is r for lease in r.leases.values())
                assert len(r.leases) == r.in_flight
            assert {lease.id for lease in pool.active_leases()} == by_pool.get(id(pool), set())
        for address in ADDRESSES:
            on = {lease.id for lease in self.registry.leases_on(address)}
            assert on == by_address.get(address, set()), address

    @invariant()
    def pool_load_reads_the_replicas(self) -> None:
        """``Registry.load`` and ``addresses`` agree with the pool: its own leases as
        ``in_flight``, the server's leases of every pool plus external as ``busy``."""
        for name in self.names:
            pool = self.registry.pools[name]
            load = self.registry.load(name)
            assert load is not None and load.waiting == len(pool.queue)
            assert [r.address for r in load.replicas] == list(pool.replicas)
            for got in load.replicas:
                r = pool.replicas[got.address]
                assert (got.phase, got.slots, got.in_flight) == (r.phase, r.slots, r.in_flight)
                assert got.busy == self._leased_on(r.address) + r.external
                assert self.registry.replica(name, r.address) is r
            assert load.in_flight == sum(r.in_flight for r in pool.replicas.values())
            live = [a for a, r in pool.replicas.items() if r.phase is not Phase.GONE]
            assert self.registry.addresses(name) == live
            assert self.registry.addresses(name, live_only=False) == list(pool.replicas)
            assert [r.address for r in load.live] == live

    @invariant()
    def capacity_is_one_truth_per_address(self) -> None:
        """One Capacity per address, shared by every live pool's replica for it, counting
        the active leases of all pools, with the smallest non-GONE slots."""
        for address in ADDRESSES:
            members = {p: p.replicas[address] for p in self._live_pools() if address in p.replicas}
            capacity = self.registry.capacity(address)
            if not members:
                assert capacity is None and self._leased_on(address) == 0
                continue
            assert capacity is not None
            assert capacity.members == members
            assert all(r.capacity is capacity for r in members.values())
            assert capacity.leased == self._leased_on(address)
            assert capacity.slots == self._slots_of(address)

    @invariant()
    def addresses_are_never_overbooked(self) -> None:
        """Per address, the leases across all pools never exceed its slots as they were
        when the newest of them was granted (slots may shrink under leases in flight, as
        when a reload lowers them; new leases then wait until enough end)."""
        newest: dict[str, Lease] = {}
        for lease in self.active.values():  # in grant order
            newest[lease.address] = lease
        for address, lease in newest.items():
            assert self._leased_on(address) <= self.slots_at_grant[lease.id], address

    @invariant()
    def work_is_conserved(self) -> None:
        """While a waiter of any pool (retired ones too) is queued, no WARM replica of its
        pool in its eligible set has a free slot, counted across all pools."""
        for pool in self._live_pools():
            for w in pool.queue:
                usable = [
                    r
                    for r in pool.replicas.values()
                    if w.eligible is None or r.address in w.eligible
                ]
                assert all(r.free == 0 for r in usable), f"{w} waits, replicas {pool.replicas}"
                assert not any(self._free_on(pool, r.address) for r in usable), w

    @invariant()
    def queue_counts_agree(self) -> None:
        for pool in self._live_pools():
            queue = pool.queue
            waiters = list(queue)
            assert len(waiters) == len(queue)
            assert queue.restricted == sum(w.eligible is not None for w in waiters)
            assert [w.seq for w in waiters] == sorted(w.seq for w in waiters)
            assert queue.head() is (waiters[0] if waiters else None)

    @invariant()
    def removed_replicas_linger_only_while_busy(self) -> None:
        for pool, address in self.removed:
            r = pool.replicas.get(address)
            assert r is None or (r.phase is Phase.GONE and r.in_flight > 0), r

    @invariant()
    def waiters_leave_waiting_exactly_once(self) -> None:
        queued = {id(w) for pool in self._live_pools() for w in pool.queue}
        for t in self.tracked:
            w = t.w
            state = w.state
            assert (state is WaitState.WAITING) == (id(w) in queued), w
            if t.first_exit is None:
                if state is not WaitState.WAITING:
                    t.first_exit = state
            else:
                assert state is t.first_exit, f"{w} left WAITING twice ({t.first_exit})"
            assert len(t.offered) <= 1, f"{w} offered {len(t.offered)} leases"
            assert t.timeouts == (
                1 if state is WaitState.TIMED_OUT and not t.marked_timed_out else 0
            )
            if state is WaitState.WAITING:
                assert t.offered == [] and w.lease is None
            elif state is WaitState.GRANTED:
                assert t.accepted is not None
                assert t.offered == [t.accepted]
                assert w.lease is t.accepted
            else:
                # CANCELLED or TIMED_OUT: never holds a lease, never accepted one.
                assert w.lease is None and t.accepted is None, w
                if state is WaitState.TIMED_OUT or t.cancelled_by_us:
                    assert t.offered == []
                else:
                    # Refused at grant time: that lease was undone.
                    [refused] = t.offered
                    assert refused.ended is EndReason.CANCELLED
                    assert refused.id not in self.registry.leases
                    assert refused.id not in self.ends

    @invariant()
    def counters_agree(self) -> None:
        for name, pool in self.made.items():
            c = pool.counters
            assert c.granted_immediately + c.granted_after_wait == self.accepted_by_pool[name]
            assert c.released == self.ended_by_pool[name]
            assert sum(c.ended.values()) == c.released
            assert c.rejected_queue_full == self.rejected_by_pool[name]


RegistryMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestRegistryMachine = RegistryMachine.TestCase
