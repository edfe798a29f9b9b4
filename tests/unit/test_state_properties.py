"""Stateful property test of the leasing core.

Hypothesis drives random sequences of acquire, wait, release (sometimes twice), cancel,
requesters going away, time passing, replica phase changes, removals, external load and
reconfiguration against a Registry with one or two pools, and checks the invariants
documented in ``warmroute/state/pool.py`` after every step. Requests may carry an eligible
set (an EPP subset hint), including empty ones and addresses no pool knows.
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
        self.removed: set[tuple[str, str]] = set()
        self.violations: list[str] = []

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
        self.names = [f"p{i}" for i in range(len(params))]
        self.registry.configure(self._spec(f"p{i}", i, param) for i, param in enumerate(params))

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
        p = self._pool(pool)
        self.requests += 1
        request_id = f"req-{self.requests}"
        if not skip_try:
            queued = len(p.queue)
            lease = p.try_acquire(request_id, eligible)
            if lease is not None:
                # _check_grant also checks that no queued waiter could have used it.
                assert queued == 0 or p.queue.restricted, "a new request overtook a queued one"
                self._check_grant(lease, eligible)
                self._accept(lease)
                return
            assert all(
                r.free == 0
                for r in p.replicas.values()
                if eligible is None or r.address in eligible
            )
        t = Tracked(p, alive, self.requests, eligible)
        queued = len(p.queue)
        try:
            t.waiter = p.enqueue(
                request_id,
                partial(self._on_grant, t),
                timeout=timeout,
                on_timeout=partial(self._on_timeout, t),
                eligible=eligible,
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
        self.removed.discard((p.name, address))

    @rule(
        pool=indexes,
        address=st.sampled_from(ADDRESSES),
        slots=slot_counts,
        phase=st.sampled_from(list(Phase)),
    )
    def upsert(self, pool: int, address: str, slots: int, phase: Phase) -> None:
        p = self._pool(pool)
        self.registry.apply(ReplicaUpsert(p.name, address, slots, phase))
        self.removed.discard((p.name, address))
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
        self.removed.add((p.name, address))

    @precondition(lambda self: any(p.replicas[a].external for p, a in self._replicas()))
    @rule(i=indexes)
    def external_load_ends(self, i: int) -> None:
        """A replica's outside traffic finishes: its slots must go to waiters at once."""
        loaded = [(p, a) for p, a in self._replicas() if p.replicas[a].external]
        p, address = loaded[i % len(loaded)]
        r = p.replicas[address]
        self.registry.apply(ReplicaExternalLoad(p.name, address, r.in_flight))
        assert r.external == 0

    @precondition(lambda self: bool(self._replicas()))
    @rule(i=indexes, running=st.integers(min_value=0, max_value=4))
    def external_load(self, i: int, running: int) -> None:
        replicas = self._replicas()
        p, address = replicas[i % len(replicas)]
        r = p.replicas[address]
        ours = r.in_flight
        self.registry.apply(ReplicaExternalLoad(p.name, address, running))
        # ``running`` counts the replica's whole load, our own leases included.
        assert r.external == max(0, running - ours)

    @rule(params=st.lists(pool_params, min_size=2, max_size=2))
    def reconfigure(self, params: list[tuple[int, float, float, str]]) -> None:
        """Change every pool's limits and policy in place."""
        before = dict(self.registry.pools)
        self.registry.configure(
            self._spec(name, i, param)
            for i, (name, param) in enumerate(zip(self.names, params, strict=False))
        )
        assert self.registry.pools == before
        for i, name in enumerate(self.names):
            assert self.registry.pool_for_model(f"m{i}") is before[name]

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
        for name in self.names:
            pool = self.registry.pools[name]
            for r in pool.replicas.values():
                assert r.in_flight == on[id(r)], r
        for lease in self.active.values():
            # A replica with a lease in flight is never forgotten.
            assert lease.pool.replicas.get(lease.address) is lease.replica

    @invariant()
    def work_is_conserved(self) -> None:
        """While a waiter is queued, no WARM replica in its eligible set has a free slot."""
        for name in self.names:
            pool = self.registry.pools[name]
            for w in pool.queue:
                usable = [
                    r
                    for r in pool.replicas.values()
                    if w.eligible is None or r.address in w.eligible
                ]
                assert all(r.free == 0 for r in usable), f"{w} waits, replicas {pool.replicas}"

    @invariant()
    def queue_counts_agree(self) -> None:
        for name in self.names:
            queue = self.registry.pools[name].queue
            waiters = list(queue)
            assert len(waiters) == len(queue)
            assert queue.restricted == sum(w.eligible is not None for w in waiters)
            assert [w.seq for w in waiters] == sorted(w.seq for w in waiters)
            assert queue.head() is (waiters[0] if waiters else None)

    @invariant()
    def removed_replicas_linger_only_while_busy(self) -> None:
        for name, address in self.removed:
            r = self.registry.pools[name].replicas.get(address)
            assert r is None or (r.phase is Phase.GONE and r.in_flight > 0), r

    @invariant()
    def waiters_leave_waiting_exactly_once(self) -> None:
        queued = {id(w) for name in self.names for w in self.registry.pools[name].queue}
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
        for name in self.names:
            c = self.registry.pools[name].counters
            assert c.granted_immediately + c.granted_after_wait == self.accepted_by_pool[name]
            assert c.released == self.ended_by_pool[name]
            assert sum(c.ended.values()) == c.released
            assert c.rejected_queue_full == self.rejected_by_pool[name]


RegistryMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestRegistryMachine = RegistryMachine.TestCase
