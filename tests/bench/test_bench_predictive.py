"""The pure parts of the predictive-scaling benchmark (bench/scenarios/predictive_plan.py): the
bursty trace, the replica-seconds integral and the latency summary."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.scenarios.predictive_plan import Plan, bursty_trace, plan, replica_seconds, summarize


def test_the_trace_is_bursts_of_the_planned_sizes() -> None:
    p = Plan(bursts=(3, 50, 7), gap=10.0, spread=0.5)
    trace = bursty_trace(p, seed=1)
    assert len(trace) == 60
    assert [r.at for r in trace] == sorted(r.at for r in trace)
    for i, size in enumerate(p.bursts):
        inside = [r for r in trace if i * p.gap <= r.at < (i + 1) * p.gap]
        assert len(inside) == size
        assert inside[0].at == i * p.gap  # each burst starts on time
    assert all(r.service_ms > 0 for r in trace)


def test_the_trace_is_seeded() -> None:
    p = plan(quick=True)
    assert bursty_trace(p, 1) == bursty_trace(p, 1)
    assert bursty_trace(p, 1) != bursty_trace(p, 2)


@pytest.mark.parametrize(
    ("steps", "start", "end", "expected"),
    [
        ([(0.0, 2)], 0.0, 10.0, 20.0),
        ([(0.0, 2), (4.0, 6), (8.0, 2)], 0.0, 10.0, 2 * 4 + 6 * 4 + 2 * 2),
        ([(0.0, 2), (12.0, 6)], 0.0, 10.0, 20.0),  # a step after the window
        ([(-5.0, 1), (5.0, 3)], 0.0, 10.0, 5 + 15),  # a step before the window
        ([], 0.0, 10.0, 0.0),
        ([(0.0, 2)], 5.0, 5.0, 0.0),
    ],
)
def test_replica_seconds_integrates_the_steps(
    steps: list[tuple[float, int]], start: float, end: float, expected: float
) -> None:
    assert replica_seconds(steps, start, end) == pytest.approx(expected)


@given(
    st.lists(st.tuples(st.floats(0, 100), st.integers(0, 10)), max_size=10),
    st.floats(0, 50),
    st.floats(0, 50),
)
def test_replica_seconds_is_additive(steps: list[tuple[float, int]], a: float, b: float) -> None:
    steps = sorted(steps, key=lambda s: s[0])
    lo, hi = sorted((a, b))
    mid = (lo + hi) / 2
    whole = replica_seconds(steps, lo, hi)
    assert whole == pytest.approx(
        replica_seconds(steps, lo, mid) + replica_seconds(steps, mid, hi), abs=1e-6
    )
    assert 0 <= whole <= 10 * (hi - lo) + 1e-9


def test_summarize() -> None:
    p50, p99, top = summarize([float(i) for i in range(1, 101)])
    assert top == 100.0 and 50 <= p50 <= 51 and 99 <= p99 <= 100
    assert all(math.isnan(v) for v in summarize([]))
