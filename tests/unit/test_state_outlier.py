"""Outlier detection's core (``warmroute.state.outlier``) and how a pool obeys it, on a fake
clock: no sleeps, no servers."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.unit.test_state_pool import FakeClock, Ids, Requester
from warmroute import view
from warmroute.state import Lease, Phase, Pool, PoolSpec, Registry, ReplicaUpsert
from warmroute.state.ask import Ask
from warmroute.state.outlier import (
    Backoff,
    Ejection,
    Outcome,
    OutlierDetector,
    OutlierSpec,
    classify,
)

F, S, FULL, IGN = Outcome.FAILURE, Outcome.SUCCESS, Outcome.FULL, Outcome.IGNORED
A, B, C, D = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"


def detector(
    clock: FakeClock, warm: tuple[str, ...] = (A, B, C, D), **spec: object
) -> OutlierDetector:
    return OutlierDetector("p", OutlierSpec(**spec), lambda: warm, clock)  # type: ignore[arg-type]


def fail(d: OutlierDetector, address: str, times: int) -> list[Ejection | Backoff | None]:
    return [d.report(address, F) for _ in range(times)]


# -- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answered", "upstream_failed", "client_gone", "expected"),
    [
        (200, True, False, False, S),
        (404, True, False, False, S),  # the replica works; the request was wrong
        (500, True, False, False, F),
        (502, True, False, False, F),
        (503, True, False, False, FULL),  # the server itself says it is full
        (429, True, False, False, FULL),
        (503, False, True, False, F),  # Envoy's 503: connection refused
        (504, False, True, False, F),  # Envoy's 504: route timeout
        (200, True, True, False, F),  # answered, then reset half-way
        (503, False, False, False, IGN),  # Envoy refused on its own (overflow, no host)
        (0, False, False, True, IGN),  # the client left
        (500, True, False, True, IGN),
    ],
)
def test_classify(
    status: int, answered: bool, upstream_failed: bool, client_gone: bool, expected: Outcome
) -> None:
    got = classify(
        status, answered=answered, upstream_failed=upstream_failed, client_gone=client_gone
    )
    assert got is expected


@pytest.mark.parametrize(
    ("warm", "percent", "allowed"),
    [(0, 50, 0), (1, 50, 0), (1, 100, 0), (2, 50, 1), (2, 10, 1), (3, 50, 1), (4, 50, 2),
     (4, 10, 1), (3, 100, 2), (10, 10, 1), (10, 35, 3), (4, 0, 0)],
)  # fmt: skip
def test_the_cap_ejects_at_least_one_of_two_and_never_all(
    warm: int, percent: int, allowed: int
) -> None:
    assert OutlierSpec(max_ejection_percent=percent).allowed(warm) == allowed


# -- ejection --------------------------------------------------------------------------------


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    clock = FakeClock(100.0)
    d = detector(clock, failure_ratio=None)
    assert fail(d, A, 4) == [None] * 4
    assert d.report(A, S) is None  # the run is broken
    assert fail(d, A, 4) == [None] * 4
    assert A not in d.held
    event = d.report(A, F)
    assert isinstance(event, Ejection)
    assert (event.address, event.reason, event.consecutive) == (A, "consecutive_failures", 5)
    assert (event.count, event.seconds, event.ejected, event.allowed) == (1, 10.0, 1, 2)
    assert A in d.held and d.ejected() == {A}
    assert d.next_due() == 110.0


def test_ignored_and_full_outcomes_do_not_break_or_extend_a_run() -> None:
    clock = FakeClock()
    d = detector(clock, failure_ratio=None, full_backoff_seconds=0)
    fail(d, A, 3)
    assert d.report(A, IGN) is None
    assert d.report(A, FULL) is None  # back-off off: nothing held
    fail(d, A, 1)
    assert A not in d.held
    assert isinstance(d.report(A, F), Ejection)  # 5 failures, whatever came between


def test_failure_ratio_over_the_window_with_a_minimum_volume() -> None:
    clock = FakeClock()
    d = detector(
        clock,
        consecutive_failures=0,
        failure_ratio=0.5,
        failure_ratio_min_requests=10,
        window_seconds=10.0,
    )
    for _ in range(4):  # 8 requests, half failed: too few to judge
        assert d.report(A, S) is None
        assert d.report(A, F) is None
        clock.advance(0.1)
    assert d.report(A, S) is None  # 9: 4 failed
    event = d.report(A, F)  # 10: 5 failed, 50 %
    assert isinstance(event, Ejection)
    assert (event.reason, event.failures, event.requests) == ("failure_ratio", 5, 10)


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    d = detector(
        clock,
        consecutive_failures=0,
        failure_ratio=0.5,
        failure_ratio_min_requests=4,
        window_seconds=10.0,
    )
    fail(d, A, 3)  # 3 of 3 failed, below the volume
    clock.advance(11.0)  # gone from the window
    for _ in range(3):
        d.report(A, S)
    assert d.report(A, F) is None  # 1 of 4 failed now, not 4 of 7
    status = d.status(A)
    assert status is not None and (status.window_requests, status.window_failures) == (4, 1)


def test_ejection_time_grows_with_each_ejection_in_a_row_up_to_the_cap() -> None:
    clock = FakeClock()
    d = detector(clock, failure_ratio=None, base_ejection_seconds=10, max_ejection_seconds=25)
    times = []
    for _ in range(4):
        event = fail(d, A, 5)[-1]
        assert isinstance(event, Ejection)
        times.append(event.seconds)
        assert d.next_due() == clock.now + event.seconds
        clock.now = d.next_due() or 0.0
        (back,), freed = d.restore()
        assert (back.address, back.seconds, back.early, freed) == (A, event.seconds, False, [A])
    assert times == [10.0, 20.0, 25.0, 25.0]


def test_time_in_service_forgives_one_step_per_base_time() -> None:
    clock = FakeClock()
    d = detector(clock, failure_ratio=None, base_ejection_seconds=10, max_ejection_seconds=300)
    for _ in range(3):  # ejected 10, 20, 30 s in a row
        fail(d, A, 5)
        clock.now = d.next_due() or 0.0
        d.restore()
    clock.advance(25.0)  # 2 base times in service
    event = fail(d, A, 5)[-1]
    assert isinstance(event, Ejection) and (event.count, event.seconds) == (2, 20.0)


def test_a_return_before_its_time_does_not_happen_and_counters_start_afresh() -> None:
    clock = FakeClock()
    d = detector(clock, failure_ratio=0.5, failure_ratio_min_requests=5)
    fail(d, A, 5)
    clock.advance(9.999)
    assert d.restore() == ([], [])
    d.report(A, F)  # a request it had when ejected also failed: no second ejection
    assert d.ejections == 1
    clock.advance(0.001)
    (back,), freed = d.restore()
    assert (back.consecutive, back.failures, back.requests) == (5, 5, 5)
    assert freed == [A] and d.held == set() and d.next_due() is None
    status = d.status(A)
    assert status is not None and not status.ejected
    assert (status.consecutive_failures, status.window_requests, status.ejections) == (0, 0, 1)
    assert fail(d, A, 4) == [None] * 4  # a fresh run is needed


# -- the cap -------------------------------------------------------------------------------


def test_never_more_than_max_ejection_percent_and_the_next_failure_tries_again() -> None:
    clock = FakeClock()
    d = detector(clock, failure_ratio=None, max_ejection_percent=50)
    assert isinstance(fail(d, A, 5)[-1], Ejection)
    assert isinstance(fail(d, B, 5)[-1], Ejection)
    assert fail(d, C, 7) == [None] * 7  # 2 of 4 out: C keeps serving
    assert d.capped == 3 and d.ejected() == {A, B}
    clock.advance(10.0)
    d.restore()  # A and B return
    event = d.report(C, F)  # C's run goes on: ejected at once now
    assert isinstance(event, Ejection) and event.consecutive == 8


def test_a_pool_of_one_is_never_ejected() -> None:
    d = detector(FakeClock(), warm=(A,), failure_ratio=None)
    assert fail(d, A, 50) == [None] * 50
    assert d.held == set() and d.capped == 46


def test_a_replica_not_warm_is_not_ejected() -> None:
    d = detector(FakeClock(), warm=(B, C), failure_ratio=None)
    assert fail(d, A, 10) == [None] * 10
    assert d.capped == 0


def test_replicas_return_early_when_the_warm_pool_shrinks_under_the_cap() -> None:
    clock = FakeClock()
    warm = [A, B, C, D]
    d = OutlierDetector("p", OutlierSpec(failure_ratio=None), lambda: warm, clock)
    fail(d, A, 5)
    clock.advance(1.0)
    fail(d, B, 5)  # A until 10, B until 11
    warm[:] = [A, B, C]  # D stops being warm: 1 of 3 may be out
    returns, freed = d.restore()
    assert [(r.address, r.early) for r in returns] == [(A, True)]
    assert freed == [A] and d.ejected() == {B}
    warm[:] = [B]  # B is the only warm replica left: it comes back too
    assert [r.address for r in d.restore()[0]] == [B]


# -- full back-off ---------------------------------------------------------------------------


def test_a_full_answer_backs_off_without_counting_toward_ejection() -> None:
    clock = FakeClock()
    d = detector(clock, full_backoff_seconds=2.0, consecutive_failures=2)
    for _ in range(5):
        event = d.report(A, FULL)
        assert event == Backoff("p", A, 2.0)
        assert A in d.held and d.ejected() == frozenset()
    assert d.next_due() == 2.0
    clock.advance(1.0)
    assert d.restore() == ([], [])
    clock.advance(1.0)
    assert d.restore() == ([], [A])  # back-offs end silently: no Return
    assert d.ejections == 0 and d.backoffs == 5
    status = d.status(A)
    assert status is not None and status.full_answers == 5


def test_disabled_detection_counts_nothing() -> None:
    d = OutlierDetector("p", None, lambda: (A, B), FakeClock())
    assert fail(d, A, 20) == [None] * 20
    assert d.report(A, FULL) is None and d.status(A) is None


def test_turning_detection_off_returns_everything_at_the_next_restore() -> None:
    clock = FakeClock()
    d = detector(clock)
    fail(d, A, 5)
    d.report(B, FULL)
    d.configure(OutlierSpec(enabled=False))
    assert d.next_due() == -math.inf
    returns, freed = d.restore()
    assert [(r.address, r.early) for r in returns] == [(A, True)]
    assert sorted(freed) == [A, B] and d.held == set()
    assert fail(d, A, 10) == [None] * 10


# -- a pool obeying it -----------------------------------------------------------------------


def _pool(clock: FakeClock, replicas: int = 2, **spec: object) -> Pool:
    pool = Pool(
        PoolSpec("p", ("m",), outlier=OutlierSpec(failure_ratio=None, **spec)),  # type: ignore[arg-type]
        clock=clock,
        new_id=Ids(),
        leases={},
    )
    for address in (A, B, C, D)[:replicas]:
        pool.upsert(address, 1, Phase.WARM)
    return pool


def _lease_on(pool: Pool, address: str, request: str = "r") -> Lease:
    """A lease on ``address`` (a subset of one)."""
    lease = pool.try_acquire(Ask(request, eligible=frozenset([address])))
    assert lease is not None and lease.address == address
    return lease


def _eject(pool: Pool, address: str, times: int = 5) -> None:
    for i in range(times):
        lease = _lease_on(pool, address, f"f{i}")
        pool.report(lease, F)
        lease.release()


def test_an_ejected_replica_takes_no_lease_and_its_return_serves_a_waiter() -> None:
    clock = FakeClock()
    pool = _pool(clock, replicas=2)
    _eject(pool, A)
    replica = pool.replicas[A]
    assert replica.held and replica.free == 0 and replica.phase is Phase.WARM
    busy = pool.try_acquire(Ask("x"))
    assert busy is not None and busy.address == B
    assert pool.try_acquire(Ask("y")) is None  # A has a free slot but is ejected
    waiter = Requester()
    pool.enqueue(Ask("y"), waiter.on_grant)
    clock.advance(10.0)
    (back,) = pool.restore_outliers()
    assert back.address == A
    assert [lease.address for lease in waiter.offered] == [A]  # pushed at once
    assert not replica.held


def test_report_before_release_keeps_the_freed_slot_from_the_ejected_replica() -> None:
    clock = FakeClock()
    pool = _pool(clock, replicas=2)
    _eject(pool, A, times=4)
    last = _lease_on(pool, A, "last")
    other = pool.try_acquire(Ask("b"))
    assert other is not None and other.address == B
    waiter = Requester()
    pool.enqueue(Ask("w"), waiter.on_grant)
    assert isinstance(pool.report(last, F), Ejection)
    last.release()  # frees A's slot, but A is ejected
    assert waiter.offered == []
    other.release()
    assert [lease.address for lease in waiter.offered] == [B]


def test_subsets_and_token_pools_skip_held_replicas_too() -> None:
    clock = FakeClock()
    pool = _pool(clock, replicas=3)
    _eject(pool, A)
    assert pool.try_acquire(Ask("only-a", eligible=frozenset([A]))) is None
    lease = pool.try_acquire(Ask("a-or-b", eligible=frozenset([A, B])))
    assert lease is not None and lease.address == B
    assert pool.can_ever_serve(frozenset([A]))  # it comes back: wait, do not refuse


def test_a_back_off_ends_in_a_dispatch_and_is_not_an_ejection() -> None:
    clock = FakeClock()
    pool = _pool(clock, replicas=1, full_backoff_seconds=0.5)
    lease = _lease_on(pool, A)
    assert pool.report(lease, FULL) == Backoff("p", A, 0.5)
    lease.release()
    waiter = Requester()
    pool.enqueue(Ask("w"), waiter.on_grant)
    assert waiter.offered == []
    assert pool.outliers.next_due() == 0.5
    clock.advance(0.5)
    assert pool.restore_outliers() == []
    assert [lease.address for lease in waiter.offered] == [A]


def test_a_removed_replica_is_forgotten_and_comes_back_clean() -> None:
    clock = FakeClock()
    pool = _pool(clock, replicas=2)
    _eject(pool, A)
    pool.remove(A)
    assert pool.outliers.held == set() and pool.outliers.status(A) is None
    pool.upsert(A, 1, Phase.WARM)
    assert not pool.replicas[A].held
    lease = pool.try_acquire(Ask("x", eligible=frozenset([A])))
    assert lease is not None


def test_registry_reports_views_and_restores_every_pool() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock, new_id=Ids())
    spec = OutlierSpec(failure_ratio=None, base_ejection_seconds=3.0)
    registry.configure([PoolSpec("p", ("m",), outlier=spec), PoolSpec("q", ("n",))])
    for address in (A, B):
        registry.apply(ReplicaUpsert("p", address, 1, Phase.WARM))
    registry.apply(ReplicaUpsert("q", C, 1, Phase.WARM))
    pool = registry.pools["p"]
    _eject(pool, A)
    for _ in range(10):  # pool q has detection off
        lease = registry.pools["q"].try_acquire(Ask("q"))
        assert lease is not None
        assert registry.report(lease, F) is None
        lease.release()
    assert registry.next_outlier_due() == 3.0
    view = {p.name: p for p in registry.view().pools}
    assert (view["p"].outlier_detection, view["p"].ejections, view["p"].ejected) == (True, 1, 1)
    (replica_a,) = [r for r in view["p"].replicas if r.address == A]
    assert replica_a.ejected and replica_a.free == 0 and replica_a.outlier is not None
    assert replica_a.outlier.ejected_seconds_left == 3.0
    assert replica_a.outlier.ejection_reason == "consecutive_failures"
    assert (view["q"].outlier_detection, view["q"].ejected) == (False, 0)
    assert registry.view().to_json()["pools"][0]["replicas"][0]["outlier"]["ejected"] is True
    clock.advance(3.0)
    assert [r.address for r in registry.restore_outliers()] == [A]
    assert registry.next_outlier_due() is None


def test_a_reload_that_turns_detection_off_lets_the_replicas_back() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock, new_id=Ids())
    registry.configure([PoolSpec("p", ("m",), outlier=OutlierSpec(failure_ratio=None))])
    for address in (A, B):
        registry.apply(ReplicaUpsert("p", address, 1, Phase.WARM))
    _eject(registry.pools["p"], A)
    registry.configure([PoolSpec("p", ("m",))])
    assert registry.next_outlier_due() == -math.inf
    (back,) = registry.restore_outliers()
    assert back.early and not registry.pools["p"].replicas[A].held


# -- a stateful property test of a pool with outlier detection ----------------------------


class OutlierPoolMachine(RuleBasedStateMachine):
    """Random requests, outcomes (reported before release), time, returns and phase changes
    on one pool of four one- or two-slot replicas; after every step: a held replica is
    never leased, no waiter waits while a WARM replica not held has a free slot, the
    replicas' ``held`` flags match the detector, and the cap holds (re-checked by
    ``restore``, so from the last restore after a phase change on)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        spec = OutlierSpec(
            consecutive_failures=2,
            failure_ratio=0.5,
            failure_ratio_min_requests=4,
            window_seconds=4.0,
            base_ejection_seconds=1.0,
            max_ejection_seconds=3.0,
            full_backoff_seconds=0.5,
        )
        self.pool = Pool(
            PoolSpec("p", ("m",), max_waiting=50, queue_timeout=1e9, outlier=spec),
            clock=self.clock,
            new_id=Ids(),
            leases={},
        )
        for address, slots in zip((A, B, C, D), (1, 2, 1, 2), strict=True):
            self.pool.upsert(address, slots, Phase.WARM)
        self.leases: list[Lease] = []
        self.held_leased: list[str] = []
        self.cap_settled = True  # no phase change since the last restore

    def _granted(self, lease: Lease) -> bool:
        if lease.replica.held:  # noted, not raised: the pool treats a raising callback as a no
            self.held_leased.append(lease.address)
        self.leases.append(lease)
        return True

    @rule(eligible=st.none() | st.frozensets(st.sampled_from((A, B, C, D)), min_size=1))
    def request(self, eligible: frozenset[str] | None) -> None:
        lease = self.pool.try_acquire(Ask("r", eligible=eligible))
        if lease is not None:
            self._granted(lease)
        elif len(self.pool.queue) < self.pool.spec.max_waiting:
            self.pool.enqueue(Ask("r", eligible=eligible), self._granted)

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 99), outcome=st.sampled_from([S, F, F, F, F, F, FULL, IGN]))
    def finish(self, index: int, outcome: Outcome) -> None:
        lease = self.leases.pop(index % len(self.leases))
        self.pool.report(lease, outcome)
        lease.release()

    @rule()
    def every_request_fails(self) -> None:
        """A burst: every replica fails what it has (a pool-wide outage)."""
        while self.leases:
            lease = self.leases.pop()
            self.pool.report(lease, F)
            lease.release()

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5]))
    def advance_and_restore(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pool.restore_outliers()
        self.cap_settled = True
        for address in self.pool.outliers.ejected():  # nothing due is left ejected
            status = self.pool.outliers.status(address)
            assert status is not None and status.ejected_seconds_left > 0

    @rule(address=st.sampled_from((A, B, C, D)), warm=st.booleans())
    def phase(self, address: str, warm: bool) -> None:
        replica = self.pool.replicas[address]
        self.pool.upsert(address, replica.slots, Phase.WARM if warm else Phase.LOADING)
        self.cap_settled = False

    @invariant()
    def no_held_replica_leased(self) -> None:
        assert self.held_leased == []

    @invariant()
    def held_flags_match(self) -> None:
        held = self.pool.outliers.held
        for address, replica in self.pool.replicas.items():
            assert replica.held == (address in held), address
        assert self.pool.outliers.ejected() <= held
        assert (self.pool.outliers.next_due() is None) == (not held)

    @invariant()
    def no_free_replica_idles_while_someone_waits(self) -> None:
        if not self.pool.queue:
            return
        for w in self.pool.queue:
            for r in self.pool.replicas.values():
                if w.eligible is None or r.address in w.eligible:
                    assert r.phase is not Phase.WARM or r.held or r.free == 0, r

    @invariant()
    def never_more_than_the_cap(self) -> None:
        if not self.cap_settled:
            return
        warm = [a for a, r in self.pool.replicas.items() if r.phase is Phase.WARM]
        ejected = self.pool.outliers.ejected()
        assert sum(a in ejected for a in warm) <= self.pool.outliers.spec.allowed(len(warm))

    @invariant()
    def within_slots(self) -> None:
        for r in self.pool.replicas.values():
            assert r.capacity.leased <= r.capacity.slots


TestOutlierPool = OutlierPoolMachine.TestCase
TestOutlierPool.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


def test_the_status_table_shows_ejections_and_back_offs() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock, new_id=Ids())
    registry.configure([PoolSpec("p", ("m",), outlier=OutlierSpec(failure_ratio=None))])
    for address in (A, B, C):
        registry.apply(ReplicaUpsert("p", address, 1, Phase.WARM))
    pool = registry.pools["p"]
    _eject(pool, A)
    lease = _lease_on(pool, B)
    pool.report(lease, FULL)
    lease.release()
    clock.advance(2.5)
    text = view.render(registry.view().to_json())
    assert "outliers: 1 ejected now, 1 ejections (0 held back by the cap), 1 full back-offs" in text
    (row_a,) = [line for line in text.splitlines() if A in line]
    assert row_a.endswith("EJECTED 7.5s more (consecutive_failures, ejection 1 in a row, 1 in all)")
    (row_c,) = [line for line in text.splitlines() if C in line]
    assert "EJECTED" not in row_c and "full" not in row_c
