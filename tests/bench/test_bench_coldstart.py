"""The pure parts of the cold-start benchmark (bench/scenarios/coldstart_plan.py): the poller's
decision, its phases, reading a gauge from /metrics, and the per-contender summary."""

from __future__ import annotations

import math

import pytest

from bench.scenarios.coldstart_plan import (
    desired_replicas,
    gauge,
    median_and_worst,
    poll_phases,
    timeline,
)


def test_poller_asks_one_replica_per_slots_waiting_within_max() -> None:
    assert desired_replicas(8, slots=1, current=0, max_replicas=4) == 4
    assert desired_replicas(3, slots=1, current=0, max_replicas=4) == 3
    assert desired_replicas(5, slots=2, current=0, max_replicas=4) == 3
    assert desired_replicas(0, slots=1, current=0, max_replicas=4) == 0


def test_poller_never_scales_down_during_the_measurement() -> None:
    assert desired_replicas(0, slots=1, current=4, max_replicas=4) == 4
    assert desired_replicas(1, slots=1, current=3, max_replicas=4) == 3


def test_phases_cover_the_cycle_one_per_stratum_and_repeat_with_the_seed() -> None:
    phases = poll_phases(30.0, 6, seed=7)
    assert len(phases) == 6
    assert all(0 <= p < 30.0 for p in phases)
    assert sorted(int(p // 5.0) for p in phases) == list(range(6))
    assert poll_phases(30.0, 6, seed=7) == phases
    assert poll_phases(30.0, 6, seed=8) != phases


@pytest.mark.parametrize(("period", "n"), [(0.0, 3), (15.0, 0)])
def test_phases_reject_nonsense(period: float, n: int) -> None:
    with pytest.raises(ValueError):
        poll_phases(period, n, seed=1)


EXPOSITION = """\
# HELP warmroute_requests_waiting Requests waiting for a slot.
# TYPE warmroute_requests_waiting gauge
warmroute_requests_waiting{pool="main"} 8.0
warmroute_requests_waiting{pool="other"} 2.0
warmroute_requests_waiting_total{pool="main"} 99.0
warmroute_leases_in_flight{pool="main"} 1.0
"""


def test_gauge_reads_one_pools_sample() -> None:
    assert gauge(EXPOSITION, "warmroute_requests_waiting", pool="main") == 8.0
    assert gauge(EXPOSITION, "warmroute_requests_waiting") == 10.0  # summed over labels
    assert gauge(EXPOSITION, "warmroute_requests_waiting", pool="none") is None
    assert gauge(EXPOSITION, "absent") is None


def test_median_and_worst_and_a_missing_value() -> None:
    assert median_and_worst([3.0, 1.0, 2.0]) == (2.0, 3.0)
    assert all(math.isnan(v) for v in median_and_worst([1.0, None]))
    assert all(math.isnan(v) for v in median_and_worst([]))


def test_quick_scales_the_whole_timeline() -> None:
    real, quick = timeline(False), timeline(True)
    assert real.poll_periods == (15.0, 30.0)
    assert real.load_seconds == 3.0
    assert quick.poll_periods == pytest.approx((1.5, 3.0))
    assert quick.load_seconds == pytest.approx(0.3)
    assert quick.service_ms == pytest.approx(real.service_ms / 10)
    assert [name for name, _ in real.contenders] == ["warmroute", "poll 15 s", "poll 30 s"]
