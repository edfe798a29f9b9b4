"""Arrival traces (bench/lib/trace.py): deterministic for a seed, and shaped as specified."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import subprocess
import sys

import pytest

from bench.lib import trace
from bench.lib.stats import percentile


def test_same_seed_same_trace() -> None:
    plan = trace.quality_plan(quick=True)
    assert trace.quality_phases(plan, seed=5) == trace.quality_phases(plan, seed=5)


def test_other_seed_other_trace() -> None:
    plan = trace.quality_plan(quick=True)
    a, b = trace.quality_phases(plan, seed=5), trace.quality_phases(plan, seed=6)
    assert all(pa.requests != pb.requests for pa, pb in zip(a, b, strict=True))


def test_quick_trace_is_a_prefix_of_the_full_one() -> None:
    # A phase's requests come from its own generators, in order: fewer requests is a prefix.
    quick = trace.quality_phases(trace.quality_plan(quick=True), seed=1)
    full = trace.quality_phases(trace.quality_plan(quick=False), seed=1)
    for q, f in zip(quick, full, strict=True):
        assert f.requests[: len(q.requests)] == q.requests


def test_service_times_do_not_depend_on_the_rate() -> None:
    service = trace.Lognormal(200.0, 1.0)
    slow = trace.make_phase("a", "", 1.0, 50, service, seed=3)
    fast = trace.make_phase("b", "", 100.0, 50, service, seed=3)
    assert [r.service_ms for r in slow.requests] == [r.service_ms for r in fast.requests]
    assert slow.arrivals != fast.arrivals


def test_lognormal_from_median_and_p99() -> None:
    s = trace.Lognormal.from_p99(200.0, 2000.0)
    assert s.sigma == pytest.approx(math.log(10) / 2.326, rel=1e-3)  # ~0.99
    assert s.quantile_ms(0.5) == pytest.approx(200.0)
    assert s.quantile_ms(0.99) == pytest.approx(2000.0)
    assert s.mean_ms == pytest.approx(200.0 * math.exp(s.sigma**2 / 2))
    with pytest.raises(ValueError):
        trace.Lognormal.from_p99(200.0, 100.0)


def test_sampled_service_times_have_the_asked_median_and_p99() -> None:
    s = trace.Lognormal.from_p99(200.0, 2000.0)
    rng = random.Random(1)
    samples = [s.sample_ms(rng) for _ in range(100_000)]
    assert statistics.median(samples) == pytest.approx(200.0, rel=0.03)
    assert percentile(samples, 99) == pytest.approx(2000.0, rel=0.08)


def test_capacity_of_the_quality_plan() -> None:
    plan = trace.quality_plan(quick=False)
    mean_s = 0.2 * math.exp(plan.service.sigma**2 / 2)
    assert plan.capacity == pytest.approx(8 / mean_s)
    assert plan.capacity == pytest.approx(24.5, abs=0.1)
    with pytest.raises(ValueError):
        trace.capacity(0, 1.0)


def test_quality_phases_rates_and_counts() -> None:
    plan = trace.quality_plan(quick=True)
    phases = trace.quality_phases(plan, seed=1)
    assert [p.name for p in phases] == ["70%", "90%", "burst"]
    assert [p.rate for p in phases] == pytest.approx(
        [0.7 * plan.capacity, 0.9 * plan.capacity, 3.0 * plan.capacity]
    )
    assert [len(p.requests) for p in phases] == [plan.per_load, plan.per_load, plan.burst_count]
    for p in phases:
        assert p.arrivals == sorted(p.arrivals)
        assert p.arrivals[0] == 0.0
        # Service times travel as x-sim-service-ms with three decimals: exactly those.
        assert all(r.service_ms == round(r.service_ms, 3) > 0 for r in p.requests)
        assert p.services == [r.service_ms / 1000 for r in p.requests]


def test_poisson_arrivals_have_the_asked_rate() -> None:
    arrivals = trace.poisson_arrivals(20.0, 50_001, random.Random(2))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 20.0, rel=0.02)
    # Exponential gaps: standard deviation equals the mean.
    assert statistics.pstdev(gaps) == pytest.approx(1 / 20.0, rel=0.03)
    with pytest.raises(ValueError):
        trace.poisson_arrivals(0.0, 10, random.Random(1))


def test_fixed_rate_offsets_span_the_duration() -> None:
    offsets = trace.fixed_rate_offsets(500.0, 4.0, random.Random(3))
    assert len(offsets) == 2000
    assert offsets[-1] == pytest.approx(4.0, rel=0.1)


def test_pure_modules_need_no_bench_extras() -> None:
    # The unit tests must run without matplotlib or Celery installed: nothing pure imports them.
    code = (
        "import sys, bench.lib.trace, bench.lib.ideal, bench.lib.stats, bench.lib.report; "
        "bad = [m for m in ('matplotlib', 'celery', 'redis') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
