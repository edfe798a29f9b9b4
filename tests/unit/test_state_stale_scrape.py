"""A replica's metrics can lag the requests inside it; Envoy's count does not.

Found against a real vLLM (tests/vllm/test_behind_warmroute.py, 2026-12-08): vLLM's API
server publishes ``vllm:num_requests_running``/``_waiting`` from the scheduler's stats,
which arrive with each engine step's outputs, so while a step is long (on this 2-core
machine, seconds; on a GPU, a long prefill) the gauges stay at their previous value. One
replica showed 0 running and 0 waiting for 8 s while warmroute had leased it 4 requests
and Envoy reported 4 in progress there. Once those leases were older than
``reconcile_after_seconds`` (5 s), the scrape's "0 < 4 leased" reclaimed all four as lost
(``warmroute_leases_reconciled_total`` 4), their slots were leased again, and the server
held 8 requests on ``--max-num-seqs 4`` = ``slots: 4`` (4 running, 4 waiting).

The rule (``Pool.set_external``): a scrape never reclaims a lease that Envoys' load
reports still count in progress on that replica.
"""

from __future__ import annotations

from warmroute.state import Phase, PoolSpec, Registry, ReplicaExternalLoad, ReplicaUpsert
from warmroute.state.ask import Ask

A = "10.0.0.1:8000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lagging_scrape_does_not_free_slots_envoy_reports_busy() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock)
    registry.configure([PoolSpec("main", ("m",), reconcile_after_seconds=5.0)])
    pool = registry.pools["main"]
    registry.apply(ReplicaUpsert("main", A, 4, Phase.WARM))
    for i in range(4):
        assert pool.try_acquire(Ask(f"r{i}")) is not None
    clock.now += 6.0  # the requests run long; their leases pass reconcile_after_seconds
    for _ in range(2):  # Envoy reports them in progress, report after report
        registry.inflight.report("envoy-0", {A: 4})
        registry.inflight.evaluate(reclaim=True)
    # The server's gauges have not caught up: it still publishes 0 running, 0 waiting.
    registry.apply(ReplicaExternalLoad("main", A, 0, reconcile=True))
    assert registry.view().leases == 4
    assert pool.replicas[A].free == 0


def test_a_scrape_still_reclaims_what_no_envoy_counts() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock)
    registry.configure([PoolSpec("main", ("m",), reconcile_after_seconds=5.0)])
    pool = registry.pools["main"]
    registry.apply(ReplicaUpsert("main", A, 4, Phase.WARM))
    for i in range(4):
        assert pool.try_acquire(Ask(f"r{i}")) is not None
    clock.now += 6.0
    registry.inflight.report("envoy-0", {A: 1})  # Envoy counts one of the four
    registry.inflight.evaluate(reclaim=False)
    registry.apply(ReplicaExternalLoad("main", A, 0, reconcile=True))
    assert registry.view().leases == 1  # three lost ends reclaimed, the counted one kept
    assert pool.replicas[A].free == 3
