"""Token-aware slots (``warmroute.state.tokens``): budgets, reservations, refunds, dispatch.

Examples first, then a stateful property test: random acquires of random sizes (with and
without subsets), releases (sometimes twice), cancellations, requesters going away,
expiry, phase changes, removals, replicas moved between pools while busy and token
budgets reloaded, against two pools sharing addresses; after every step, per address,
the reservations equal the active leases' costs (so each is refunded exactly once), and
no lease was granted beyond the address's slots or token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from warmroute.errors import RequestTooLarge
from warmroute.metrics import Metrics
from warmroute.state import (
    EndReason,
    Lease,
    Phase,
    Pool,
    PoolSpec,
    Registry,
    ReplicaRemoved,
    ReplicaUpsert,
    Waiter,
    WaitState,
)
from warmroute.state.ask import Ask
from warmroute.state.dispatch import SlotDispatch
from warmroute.state.priority import BandSpec, PrioritySpec
from warmroute.state.tokens import TokenSpec, cost_of
from warmroute.view import render

A, B, C = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"lease-{self.n}"


def _registry(*specs: PoolSpec) -> tuple[Registry, Clock]:
    clock = Clock()
    registry = Registry(clock=clock, new_id=Ids())
    registry.configure(specs)
    return registry, clock


def _spec(name: str = "p", capacity: int | None = 100, **kw: object) -> PoolSpec:
    tokens = None if capacity is None else TokenSpec(capacity, default_max_tokens=10)
    return PoolSpec(name, (f"m-{name}",), tokens=tokens, **kw)  # type: ignore[arg-type]


def _warm(registry: Registry, pool: str, address: str, slots: int = 4) -> None:
    registry.apply(ReplicaUpsert(pool, address, slots, Phase.WARM))


class Got:
    """An on_grant that keeps what it got."""

    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.lease: Lease | None = None

    def __call__(self, lease: Lease) -> bool:
        if self.alive:
            self.lease = lease
        return self.alive


# -- the cost of a request ---------------------------------------------------------------


def test_cost_is_prompt_estimate_plus_max_tokens() -> None:
    spec = TokenSpec(1000, default_max_tokens=50, chars_per_token=4)
    assert spec.cost(400, 30) == 100 + 30
    assert spec.cost(401, 30) == 101 + 30  # a partial token counts
    assert spec.cost(400, None) == 100 + 50  # no max_tokens: the pool's default
    assert spec.cost(0, 0) == 0
    assert spec.cost(-5, -5) == 0  # nonsense sizes count for nothing, never negative
    assert TokenSpec(1000, chars_per_token=2.5).cost(10, 0) == 4


@pytest.mark.parametrize(
    "kw",
    [
        {"capacity": 0},
        {"capacity": 10, "chars_per_token": 0},
        {"capacity": 10, "default_max_tokens": -1},
    ],
)
def test_token_spec_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenSpec(**kw)  # type: ignore[arg-type]


# -- leasing -----------------------------------------------------------------------------


def test_a_lease_reserves_its_tokens_and_release_refunds_them_once() -> None:
    registry, _ = _registry(_spec(capacity=100))
    _warm(registry, "p", A)
    pool = registry.pools["p"]
    lease = pool.try_acquire(Ask("r1", tokens=60))
    assert lease is not None
    capacity = lease.replica.capacity
    assert (capacity.tokens, capacity.tokens_leased, capacity.reserved) == (100, 60, {lease.id: 60})
    # Three slots are free, but not 60 tokens: a second large request waits.
    assert pool.try_acquire(Ask("r2", tokens=60)) is None
    small = pool.try_acquire(Ask("r3", tokens=40))
    assert small is not None and capacity.tokens_leased == 100
    assert lease.release() and not lease.release()
    assert capacity.tokens_leased == 40 and capacity.reserved == {small.id: 40}
    small.release(EndReason.EXPIRED)
    assert capacity.tokens_leased == 0 and capacity.reserved == {}


def test_an_oversized_request_is_refused_at_once_naming_the_sizes() -> None:
    registry, _ = _registry(_spec(capacity=100))
    _warm(registry, "p", A)
    pool = registry.pools["p"]
    with pytest.raises(RequestTooLarge) as raised:
        pool.try_acquire(Ask("r", tokens=101))
    assert raised.value.code == "request_too_large_for_pool"
    assert raised.value.http_status == 400
    assert "101" in raised.value.message and "100" in raised.value.message
    with pytest.raises(RequestTooLarge):
        pool.enqueue(Ask("r", tokens=101), Got())
    assert not pool.queue and not registry.leases
    assert pool.try_acquire(Ask("r", tokens=100)) is not None  # exactly the budget fits


def test_waiters_are_served_in_order_as_tokens_free() -> None:
    registry, _ = _registry(_spec(capacity=100))
    _warm(registry, "p", A, slots=4)
    pool = registry.pools["p"]
    first = pool.try_acquire(Ask("big1", tokens=50))
    second = pool.try_acquire(Ask("big2", tokens=50))
    assert first is not None and second is not None
    got3, got4, small = Got(), Got(), Got()
    pool.enqueue(Ask("big3", tokens=50), got3)
    pool.enqueue(Ask("big4", tokens=50), got4)
    # Head of line: a small request behind them waits too, though a slot is free.
    pool.enqueue(Ask("small", tokens=5), small)
    assert (got3.lease, got4.lease, small.lease) == (None, None, None)
    first.release()
    assert got3.lease is not None and got4.lease is None and small.lease is None
    second.release()
    assert got4.lease is not None and small.lease is None
    got3.lease.release()
    assert small.lease is not None
    assert small.lease.replica.capacity.tokens_leased == 55


def test_the_head_of_the_line_leaving_lets_the_next_waiter_in() -> None:
    # Found by the state machine below: a cancelled or timed-out head kept a waiter that
    # fits behind it waiting until the next release.
    registry, clock = _registry(_spec(capacity=100, queue_timeout=5.0))
    _warm(registry, "p", A, slots=4)
    pool = registry.pools["p"]
    assert pool.try_acquire(Ask("a", tokens=42)) is not None
    assert pool.try_acquire(Ask("b", tokens=42)) is not None
    big, small, smaller = Got(), Got(), Got()
    head = pool.enqueue(Ask("big", tokens=59), big)
    pool.enqueue(Ask("small", tokens=10), small)
    assert small.lease is None  # it fits, but waits behind the head
    assert pool.cancel(head)
    assert small.lease is not None and big.lease is None
    # The same when the head times out.
    head = pool.enqueue(Ask("big2", tokens=59), Got())
    clock.now += 3.0
    pool.enqueue(Ask("smaller", tokens=5), smaller)
    assert smaller.lease is None
    clock.now += 3.0  # past the head's queue timeout, not the one behind it
    pool.expire_waiters(clock.now)
    assert smaller.lease is not None


def test_a_held_replica_does_not_block_a_waiter_that_cannot_use_it() -> None:
    registry, _ = _registry(_spec(capacity=100))
    _warm(registry, "p", A)
    _warm(registry, "p", B)
    pool = registry.pools["p"]
    on_a = pool.try_acquire(Ask("fill-a", eligible=frozenset({A}), tokens=80))
    assert on_a is not None and on_a.address == A
    big, other = Got(), Got()
    pool.enqueue(Ask("big-on-a", eligible=frozenset({A}), tokens=50), big)
    pool.enqueue(Ask("on-b", eligible=frozenset({B}), tokens=50), other)
    assert big.lease is None
    assert other.lease is not None and other.lease.address == B
    on_a.release()
    assert big.lease is not None and big.lease.address == A


def test_a_refused_grant_is_refunded() -> None:
    registry, _ = _registry(_spec(capacity=100))
    _warm(registry, "p", A)
    pool = registry.pools["p"]
    held = pool.try_acquire(Ask("held", tokens=100))
    assert held is not None
    gone = Got(alive=False)
    waiter = pool.enqueue(Ask("gone", tokens=30), gone)
    held.release()
    capacity = held.replica.capacity
    assert waiter.state is WaitState.CANCELLED
    assert capacity.tokens_leased == 0 and capacity.reserved == {} and capacity.leased == 0


def test_priority_bands_keep_their_order_with_tokens() -> None:
    bands = PrioritySpec((BandSpec("high"), BandSpec("low")), default=1)
    registry, _ = _registry(_spec(capacity=100, priority=bands))
    _warm(registry, "p", A)
    pool = registry.pools["p"]
    held = pool.try_acquire(Ask("held", tokens=100))
    assert held is not None
    low, high = Got(), Got()
    pool.enqueue(Ask("low", tokens=10, band="low"), low)
    pool.enqueue(Ask("high", tokens=90, band="high"), high)
    held.release()
    assert high.lease is not None and low.lease is not None  # 90 + 10 fit together
    assert int(high.lease.id.split("-")[1]) < int(low.lease.id.split("-")[1])  # high first


def test_a_pool_without_tokens_is_unchanged() -> None:
    registry, _ = _registry(_spec(capacity=None))
    _warm(registry, "p", A, slots=2)
    pool = registry.pools["p"]
    assert isinstance(pool._dispatcher, SlotDispatch)  # the plain one, not by tokens
    leases = [pool.try_acquire(Ask("r1")), pool.try_acquire(Ask("r2"))]
    assert all(leases) and leases[0] is not None
    assert leases[0].replica.capacity.tokens is None
    assert leases[0].replica.capacity.reserved == {}


def test_a_busy_replica_moved_between_pools_keeps_its_reservations() -> None:
    registry, _ = _registry(_spec("a", capacity=100), _spec("b", capacity=100))
    _warm(registry, "a", A)
    first = registry.pools["a"].try_acquire(Ask("r", tokens=70))
    assert first is not None
    registry.apply(ReplicaRemoved("a", A))
    _warm(registry, "b", A)
    b = registry.pools["b"]
    assert b.try_acquire(Ask("r2", tokens=40)) is None  # a's 70 still count here
    got = Got()
    b.enqueue(Ask("r2", tokens=40), got)
    first.release()  # a's lease ends: its tokens come back, b's waiter is served
    assert got.lease is not None
    assert got.lease.replica.capacity.tokens_leased == 40


def test_the_smaller_budget_wins_and_reloads_take_effect() -> None:
    registry, _ = _registry(_spec("a", capacity=100), _spec("b", capacity=60))
    _warm(registry, "a", A)
    _warm(registry, "b", A)
    capacity = registry.capacity(A)
    assert capacity is not None and capacity.tokens == 60
    a = registry.pools["a"]
    lease = a.try_acquire(Ask("r", tokens=50))
    assert lease is not None
    got = Got()
    a.enqueue(Ask("r2", tokens=20), got)
    assert got.lease is None
    registry.configure([_spec("a", capacity=100), _spec("b", capacity=80)])
    assert capacity.tokens == 80 and got.lease is not None  # the reload dispatched
    registry.configure([_spec("a", capacity=None), _spec("b", capacity=None)])
    assert capacity.tokens is None and "Pool._dispatch of" in repr(a._dispatch)
    lease.release()
    got.lease.release()
    assert capacity.tokens_leased == 0 and capacity.reserved == {}


def test_views_metrics_and_the_status_table_show_tokens() -> None:
    registry, _ = _registry(_spec("a", capacity=100), _spec("b", capacity=None))
    _warm(registry, "a", A)
    _warm(registry, "b", A)
    _warm(registry, "b", B)
    assert registry.pools["a"].try_acquire(Ask("r1", tokens=30)) is not None
    assert registry.pools["b"].try_acquire(Ask("r2")) is not None  # reserves nothing
    view = registry.view()
    a, b = view.pools
    assert (a.replicas[0].tokens, a.replicas[0].tokens_leased, a.tokens_leased) == (100, 30, 30)
    assert (b.replicas[0].tokens_busy, b.tokens_leased) == (30, 0)
    assert b.replicas[1].tokens is None  # no pool with tokens lists B
    text = Metrics(registry.view).exposition().decode()
    assert 'warmroute_tokens_leased{pool="a"} 30.0' in text
    assert 'warmroute_tokens{pool="a"} 100.0' in text
    assert 'warmroute_tokens_leased{pool="b"} 0.0' in text  # b's replica A has a budget
    table = render(view.to_json())
    assert "tokens reserved 30 (all pools 30) of 100 on warm replicas" in table


# -- the property test -------------------------------------------------------------------

ADDRESSES = (A, B, C)
budgets = st.none() | st.sampled_from([20, 50, 100])
subsets = st.none() | st.frozensets(st.sampled_from(ADDRESSES), min_size=1, max_size=2)


@dataclass(eq=False)
class Request:
    pool: Pool
    cost: int
    eligible: frozenset[str] | None
    alive: bool
    waiter: Waiter | None = None
    lease: Lease | None = None


class TokenMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.registry = Registry(clock=self.clock, new_id=Ids())
        self.active: dict[str, tuple[Lease, int]] = {}  # lease id -> (lease, its cost)
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.budgets: dict[str, int | None] = {}

    def _configure(self) -> None:
        self.registry.configure(
            PoolSpec(
                name,
                (f"m-{name}",),
                max_waiting=4,
                queue_timeout=5.0,
                max_request_seconds=20.0,
                tokens=None if b is None else TokenSpec(b, default_max_tokens=5),
            )
            for name, b in self.budgets.items()
        )

    def _pools(self) -> list[Pool]:
        return [*self.registry.pools.values(), *self.registry.retired]

    def _check_grant(self, lease: Lease, r: Request) -> int:
        """At the moment of a grant: within the address's slots and token budget."""
        capacity = lease.replica.capacity
        cost = capacity.reserved.get(lease.id, 0)
        asked = r.cost if r.waiter is None else cost_of(r.waiter)  # 0: queued without tokens
        if lease.pool.spec.tokens is not None and cost != asked:
            self.violations.append(f"{lease} reserved {cost}, asked {asked}")
        if lease.pool.spec.tokens is not None:
            # Head of line: no older waiter of the pool that may use this replica waits.
            for o in lease.pool.queue:
                if o is r.waiter or (r.waiter is not None and o.seq > r.waiter.seq):
                    continue
                if o.eligible is None or lease.address in o.eligible:
                    self.violations.append(f"{lease} overtook {o}")
        if capacity.leased + lease.replica.external > capacity.slots:
            self.violations.append(f"{lease} overbooks {capacity}")
        if cost and capacity.tokens is not None and capacity.tokens_leased > capacity.tokens:
            self.violations.append(f"{lease} over the token budget: {capacity}")
        if r.eligible is not None and lease.address not in r.eligible:
            self.violations.append(f"{lease} outside {r.eligible}")
        return cost

    def _on_grant(self, r: Request, lease: Lease) -> bool:
        cost = self._check_grant(lease, r)
        if r.alive:
            r.lease = lease
            self.active[lease.id] = (lease, cost)
        return r.alive

    @initialize(first=budgets, second=budgets)
    def start(self, first: int | None, second: int | None) -> None:
        self.budgets = {"p0": first if first is not None else 50, "p1": second}
        self._configure()
        for address in ADDRESSES[:2]:
            self.registry.apply(ReplicaUpsert("p0", address, 2, Phase.WARM))

    @rule(
        pool=st.sampled_from(["p0", "p1"]),
        cost=st.integers(min_value=0, max_value=110),
        eligible=subsets,
        alive=st.booleans(),
    )
    def acquire(self, pool: str, cost: int, eligible: frozenset[str] | None, alive: bool) -> None:
        p = self.registry.pools[pool]
        r = Request(p, cost, eligible, alive)
        try:
            if p.spec.tokens is None:
                lease = p.try_acquire(Ask(pool, eligible=eligible))
            else:
                lease = p.try_acquire(Ask(pool, eligible=eligible, tokens=cost))
        except RequestTooLarge:
            assert p.spec.tokens is not None and cost > p.spec.tokens.capacity
            return
        if lease is not None:
            r.alive = True
            self._on_grant(r, lease)
            return
        try:
            r.waiter = p.enqueue(
                Ask(pool, eligible=eligible, tokens=None if p.spec.tokens is None else cost),
                lambda lease: self._on_grant(r, lease),
            )
        except Exception as exc:  # QueueFull
            assert exc.__class__.__name__ == "QueueFull"
            return
        self.requests.append(r)

    @rule(i=st.integers(min_value=0, max_value=99), twice=st.booleans())
    def release(self, i: int, twice: bool) -> None:
        if not self.active:
            return
        lease, _ = list(self.active.values())[i % len(self.active)]
        del self.active[lease.id]
        assert lease.release()
        if twice:
            assert not lease.release()

    @rule(i=st.integers(min_value=0, max_value=99))
    def cancel(self, i: int) -> None:
        waiting = [r for r in self.requests if r.waiter and r.waiter.state is WaitState.WAITING]
        if waiting:
            r = waiting[i % len(waiting)]
            assert r.waiter is not None and r.pool.cancel(r.waiter)

    @rule(dt=st.sampled_from([1.0, 6.0, 30.0]))
    def tick(self, dt: float) -> None:
        self.clock.now += dt
        for lease in self.registry.expire():
            self.active.pop(lease.id, None)

    @rule(
        pool=st.sampled_from(["p0", "p1"]),
        address=st.sampled_from(ADDRESSES),
        slots=st.integers(min_value=1, max_value=3),
        phase=st.sampled_from([Phase.WARM, Phase.WARM, Phase.LOADING, Phase.DRAINING]),
    )
    def upsert(self, pool: str, address: str, slots: int, phase: Phase) -> None:
        self.registry.apply(ReplicaUpsert(pool, address, slots, phase))

    @rule(pool=st.sampled_from(["p0", "p1"]), address=st.sampled_from(ADDRESSES))
    def remove(self, pool: str, address: str) -> None:
        self.registry.apply(ReplicaRemoved(pool, address))

    @rule(pool=st.sampled_from(["p0", "p1"]), budget=budgets)
    def reload_budget(self, pool: str, budget: int | None) -> None:
        self.budgets[pool] = budget
        self._configure()

    @invariant()
    def no_violation(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def reservations_are_the_active_leases(self) -> None:
        """Per address: what is reserved is exactly the active leases' costs (every
        refund happened, and once), and never more leases than slots allow at grant."""
        for address in ADDRESSES:
            capacity = self.registry.capacity(address)
            expected = {
                lease.id: cost
                for lease, cost in self.active.values()
                if lease.address == address and cost
            }
            if capacity is None:
                assert not expected
                continue
            assert capacity.reserved == expected
            assert capacity.tokens_leased == sum(expected.values()) >= 0
            assert capacity.leased == sum(
                lease.address == address for lease, _ in self.active.values()
            )

    @invariant()
    def budget_is_the_smallest_live_one(self) -> None:
        for address in ADDRESSES:
            capacity = self.registry.capacity(address)
            if capacity is None:
                continue
            figures = [
                (r.phase is Phase.GONE, pool.spec.tokens.capacity)
                for pool, r in capacity.members.items()
                if pool.spec.tokens is not None
            ]
            live = [b for gone, b in figures if not gone] or [b for _, b in figures]
            assert capacity.tokens == (min(live) if live else None)

    @invariant()
    def waiters_that_fit_are_served(self) -> None:
        """Work conservation, head of line: a queued waiter of a token pool fits no WARM
        replica of its set with a free slot, unless an older waiter may use that replica
        (it holds it: it does not fit either, by the same rule)."""
        for pool in self._pools():
            if pool.spec.tokens is None:
                continue
            queued = list(pool.queue)  # oldest first
            for n, w in enumerate(queued):
                for r in pool.replicas.values():
                    c = r.capacity
                    if (
                        r.phase is Phase.WARM
                        and c.leased + r.external < c.slots
                        and (w.eligible is None or r.address in w.eligible)
                        and c.fits(cost_of(w))
                    ):
                        older = queued[:n]
                        assert any(o.eligible is None or r.address in o.eligible for o in older), (
                            f"{w} fits {r} ({c}) and waits"
                        )


TokenMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_token_machine = TokenMachine.TestCase
