"""Unit tests of the in-flight book: a start's fence and Envoys' load reports against the
ledger. Fake clock, registry only: no loop, no sleeps."""

from __future__ import annotations

from warmroute.state import (
    EndReason,
    Phase,
    PoolSpec,
    Registry,
    ReplicaExternalLoad,
    ReplicaUpsert,
)
from warmroute.state.ask import Ask

A, B = "10.0.0.1:8000", "10.0.0.2:8000"
OLD = "0ld0ld00" + "ab" * 12  # a lease id with another process's epoch


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, slots: int = 2, reconcile_after: float = 5.0) -> None:
        self.clock = FakeClock()
        self.registry = Registry(clock=self.clock)
        self.book = self.registry.inflight
        self.registry.configure([PoolSpec("main", ("m",), reconcile_after_seconds=reconcile_after)])
        self.pool = self.registry.pools["main"]
        self.slots = slots

    def add(self, *addresses: str) -> None:
        for address in addresses:
            self.registry.apply(ReplicaUpsert("main", address, self.slots, Phase.WARM))

    def free(self, address: str) -> int:
        return self.pool.replicas[address].free

    def report(self, node: str = "envoy-0", *, reclaim: bool = True, **counts: int) -> object:
        by_address = {A: counts.get("a", 0), B: counts.get("b", 0)}
        self.book.report(node, by_address)
        return self.book.evaluate(reclaim=reclaim)

    def acquire(self, request: str) -> str:
        lease = self.pool.try_acquire(Ask(request))
        assert lease is not None
        return lease.address


def test_the_fence_holds_replicas_known_at_begin_and_those_that_appear_later() -> None:
    s = Setup()
    s.add(A)
    s.book.begin("start")
    s.add(B)  # discovered after the start: held too
    assert (s.free(A), s.free(B)) == (0, 0)
    assert s.pool.try_acquire(Ask("r1")) is None
    assert s.book.view().held == {A: 2, B: 2}


def test_an_old_requests_end_lowers_the_bound_and_the_last_one_frees_the_replica() -> None:
    s = Setup()
    s.add(A)
    s.book.begin("start")
    assert s.book.unknown_end(A, OLD)
    assert s.free(A) == 1  # at most one old request can still run there
    assert s.book.unknown_end(A, OLD)
    assert s.free(A) == 2 and s.book.held(A) is None
    assert s.book.view().lifted == {"ends": 1}
    assert not s.book.unknown_end(A, OLD)  # nothing held any more: nothing to lower


def test_an_end_of_one_of_our_own_leases_says_nothing_about_old_requests() -> None:
    s = Setup()
    s.add(A)
    s.book.begin("start")
    own = s.registry.epoch + "cd" * 12
    assert not s.book.unknown_end(A, own)
    assert s.free(A) == 0


def test_complete_reports_lift_the_fence_to_what_envoys_count() -> None:
    s = Setup()
    s.add(A, B)
    s.book.begin("start")
    s.report(a=1, b=0)
    assert s.book.truth() == 2
    assert (s.free(A), s.free(B)) == (1, 2)  # one old request still runs on A
    assert not s.book.fencing


def test_a_scrape_replaces_the_fence_for_its_replica() -> None:
    s = Setup()
    s.add(A, B)
    s.book.begin("start")
    s.registry.apply(ReplicaExternalLoad("main", A, 1, reconcile=True))
    assert (s.free(A), s.free(B)) == (1, 0)
    assert s.book.view().lifted == {"scrape": 1}


def test_the_grace_lifts_what_is_still_held() -> None:
    s = Setup()
    s.add(A, B)
    s.book.begin("start")
    s.book.unknown_end(A, OLD)
    assert s.book.lift_all() == 2
    assert (s.free(A), s.free(B)) == (2, 2)


def test_old_requests_only_ever_end_and_a_drop_needs_two_reports_to_agree() -> None:
    s = Setup(slots=4)
    s.add(A)
    s.book.begin("start")
    s.report(a=2)
    s.book.truth()
    assert s.free(A) == 2  # two orphans
    for r in ("r1", "r2"):
        assert s.acquire(r) == A
    s.clock.now += 1.0
    # One of our requests ended upstream, its log entry not yet here: Envoy counts 3 of
    # our 2 leases + 2 orphans. One report alone must not shrink the orphans.
    s.report(a=3)
    assert s.pool.replicas[A].unleased == 2
    s.report(a=4)  # and a higher count never raises them either
    assert s.pool.replicas[A].unleased == 2
    s.report(a=3)
    s.report(a=3)  # two reports agree: one orphan ended
    assert s.pool.replicas[A].unleased == 1


def test_unleased_traffic_counts_once_two_reports_show_it() -> None:
    s = Setup()
    s.add(A)
    assert s.report(a=1).unleased_seen == {}  # a snapshot race costs no slot
    assert s.free(A) == 2
    outcome = s.report(a=1)
    assert outcome.unleased_seen == {A: 1}
    assert s.free(A) == 1
    assert s.report(a=0).unleased_seen == {}
    assert s.free(A) == 2  # gone as soon as Envoy stops counting it


def test_a_young_lease_envoy_does_not_count_yet_is_not_taken_for_missing() -> None:
    s = Setup()
    s.add(A)
    s.report(a=1)
    s.report(a=1)  # one unleased request runs on A
    assert s.acquire("r1") == A  # just granted: Envoy has not sent it upstream yet
    s.report(a=1)
    # E - leased = 0 would say the unleased request is gone; the young lease keeps it.
    assert s.pool.replicas[A].unleased == 1
    assert s.free(A) == 0


def test_a_lease_no_envoy_counts_in_two_reports_is_reclaimed_as_lost() -> None:
    s = Setup(reconcile_after=5.0)
    s.add(A)
    s.acquire("r1")
    s.report(a=0)
    s.report(a=0)
    assert s.registry.view().leases == 1  # too young to be lost: it may not have arrived
    s.clock.now += 6.0
    assert s.report(a=0).lost == []  # one report alone: maybe its end is on its way
    lost = s.report(a=0).lost
    assert [lease.request_id for lease in lost] == ["r1"]
    assert lost[0].ended is EndReason.RECONCILED
    assert s.registry.view().leases == 0 and s.free(A) == 2


def test_without_reclaim_a_lost_lease_is_kept() -> None:
    s = Setup()
    s.add(A)
    s.acquire("r1")
    s.clock.now += 6.0
    s.report(a=0, reclaim=False)
    assert s.report(a=0, reclaim=False).lost == []
    assert s.registry.view().leases == 1


def test_reports_sum_over_envoys_and_a_forgotten_envoy_stops_counting() -> None:
    s = Setup()
    s.add(A)
    s.report("envoy-0", a=1)
    s.report("envoy-1", a=1)
    s.report("envoy-1", a=1)
    assert s.free(A) == 0
    s.book.forget("envoy-1")
    s.book.forget("envoy-0")
    s.book.evaluate(reclaim=True)
    s.book.evaluate(reclaim=True)
    assert s.free(A) == 2


def test_a_replica_that_joins_another_pool_gets_the_count_of_its_address() -> None:
    s = Setup()
    s.add(A)
    s.report(a=1)
    s.report(a=1)
    s.registry.configure([PoolSpec("main", ("m",)), PoolSpec("other", ("o",))])
    s.registry.apply(ReplicaUpsert("other", A, 2, Phase.WARM))
    assert s.registry.pools["other"].replicas[A].free == 1


def test_the_view_shows_what_envoys_report_and_the_fence() -> None:
    s = Setup()
    s.add(A, B)
    s.book.begin("start")
    s.report(a=1)
    view = s.registry.view()
    replicas = {r.address: r for r in view.pools[0].replicas}
    assert replicas[A].envoy_in_progress == 1 and replicas[A].fenced == 2
    assert view.fence.active and view.fence.reason == "start" and view.fence.reporting_envoys == 1
    s.book.truth()
    replicas = {r.address: r for r in s.registry.view().pools[0].replicas}
    assert replicas[A].fenced is None and replicas[A].unleased == 1


def test_after_the_reports_lift_the_fence_an_old_requests_end_frees_its_slot_at_once() -> None:
    s = Setup(slots=1)
    s.add(A)
    s.book.begin("start")
    s.report(a=1)
    s.book.truth()
    assert s.free(A) == 0  # Envoy counts one old request there
    assert s.book.unknown_end(A, OLD)  # the access log: it ended
    assert s.free(A) == 1  # at once, not two reports later
    assert not s.book.unknown_end(A, OLD)  # no old request left to end
    s.report(a=0)
    assert s.free(A) == 1
