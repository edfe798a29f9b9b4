"""Unit tests for the simulated replica's service-time distributions (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest

from warmroute.sim.service_time import ServiceTime, parse_service_time


def test_fixed_sample_is_exact_and_leaves_the_rng_alone() -> None:
    service = ServiceTime("fixed", 250.0)
    rng = random.Random(7)
    state = rng.getstate()

    assert [service.sample(rng) for _ in range(5)] == [0.25] * 5
    assert rng.getstate() == state


def test_fixed_ignores_sigma() -> None:
    assert ServiceTime("fixed", 40.0, sigma=2.0).sample(random.Random(1)) == 0.04


def test_lognormal_median_and_log_spread_match_parameters() -> None:
    service = ServiceTime("lognormal", 200.0, sigma=0.5)
    rng = random.Random(12345)

    samples = [service.sample(rng) for _ in range(20_000)]

    assert all(s > 0 for s in samples)
    # Standard error of the median is ~0.5% here; 3% leaves a wide margin.
    assert statistics.median(samples) == pytest.approx(0.2, rel=0.03)
    assert statistics.stdev(math.log(s) for s in samples) == pytest.approx(0.5, rel=0.03)
    assert max(samples) > 0.4 and min(samples) < 0.1  # it really is spread out


def test_lognormal_is_reproducible_for_a_seed() -> None:
    service = ServiceTime("lognormal", 100.0, sigma=1.0)
    rng_a, rng_b = random.Random(9), random.Random(9)

    assert [service.sample(rng_a) for _ in range(50)] == [service.sample(rng_b) for _ in range(50)]


def test_lognormal_with_zero_sigma_is_the_median() -> None:
    rng = random.Random(3)
    assert [ServiceTime("lognormal", 80.0).sample(rng) for _ in range(3)] == [0.08] * 3


def test_service_time_is_frozen() -> None:
    service = ServiceTime("fixed", 10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.median_ms = 20.0  # type: ignore[misc]


@pytest.mark.parametrize("median_ms", [0.0, -1.0, math.nan, math.inf])
def test_invalid_median_raises(median_ms: float) -> None:
    with pytest.raises(ValueError, match="median_ms must be a finite number > 0"):
        parse_service_time("lognormal", median_ms, 0.5)
    with pytest.raises(ValueError, match="median_ms"):
        ServiceTime("fixed", median_ms)


@pytest.mark.parametrize("sigma", [-0.1, math.nan, math.inf])
def test_invalid_sigma_raises(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        parse_service_time("lognormal", 100.0, sigma)


def test_unknown_distribution_raises_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'uniform'.*fixed, lognormal"):
        parse_service_time("uniform", 100.0)
    with pytest.raises(ValueError, match="unknown service-time distribution"):
        ServiceTime("uniform", 100.0)  # type: ignore[arg-type]


def test_parse_normalises_name_and_numbers() -> None:
    parsed = parse_service_time(" LogNormal ", 150, 0.25)

    assert parsed == ServiceTime("lognormal", 150.0, 0.25)
    assert isinstance(parsed.median_ms, float)
    assert parse_service_time("fixed", 5.0) == ServiceTime("fixed", 5.0, 0.0)
