"""Arrival traces: deterministic, seeded, replayed identically against every contender.

A :class:`Phase` is a list of requests, each with an arrival offset (seconds since the phase
starts) and its own service time. The service time travels with the request (the simulated
replica's ``x-sim-service-ms`` header), so every contender does exactly the same work and
the ideal queue is computed on the very same numbers.

Everything here is pure: the same seed gives the same trace on any machine (``random.Random``
with an integer seed is stable across Python versions for ``random()``/``expovariate``/``gauss``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# z such that P(N(0,1) <= z) = 0.99.
Z99 = 2.3263478740408408


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: when it arrives and how long it occupies a slot."""

    at: float  # seconds since the phase started
    service_ms: float  # rounded to the microsecond, as sent in x-sim-service-ms

    @property
    def service_s(self) -> float:
        return self.service_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Phase:
    """A named slice of load, replayed on an idle system (every phase starts empty)."""

    name: str  # short key: "70%", "90%", "burst"
    description: str
    rate: float  # mean arrivals per second
    requests: tuple[Request, ...]

    @property
    def arrivals(self) -> list[float]:
        return [r.at for r in self.requests]

    @property
    def services(self) -> list[float]:
        """Service times in seconds."""
        return [r.service_s for r in self.requests]

    @property
    def duration(self) -> float:
        return self.requests[-1].at if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Lognormal:
    """A lognormal service time: ``median * exp(sigma * N(0, 1))``, in milliseconds."""

    median_ms: float
    sigma: float

    @classmethod
    def from_p99(cls, median_ms: float, p99_ms: float) -> Lognormal:
        """The lognormal with this median whose 99th percentile is ``p99_ms``."""
        if not 0 < median_ms < p99_ms:
            raise ValueError(f"need 0 < median < p99, got {median_ms} and {p99_ms}")
        return cls(median_ms, math.log(p99_ms / median_ms) / Z99)

    @property
    def mean_ms(self) -> float:
        return self.median_ms * math.exp(self.sigma**2 / 2)

    def quantile_ms(self, q: float) -> float:
        from statistics import NormalDist

        return self.median_ms * math.exp(self.sigma * NormalDist().inv_cdf(q))

    def sample_ms(self, rng: random.Random) -> float:
        return self.median_ms * math.exp(self.sigma * rng.gauss(0.0, 1.0))


def capacity(servers: int, mean_service_s: float) -> float:
    """Requests per second ``servers`` one-slot replicas complete at full utilisation."""
    if servers < 1 or mean_service_s <= 0:
        raise ValueError(f"need servers >= 1 and a positive mean, got {servers}, {mean_service_s}")
    return servers / mean_service_s


def phase_seed(seed: int, index: int) -> int:
    """The seed of phase ``index`` of a run seeded ``seed``: phases are independent streams,
    so adding a phase never changes the ones before it."""
    return seed * 1_000_003 + index * 7919


def poisson_arrivals(rate: float, count: int, rng: random.Random) -> list[float]:
    """``count`` arrival offsets of a Poisson process of ``rate``/s; the first is at 0."""
    if rate <= 0 or count < 0:
        raise ValueError(f"need rate > 0 and count >= 0, got {rate}, {count}")
    t, out = 0.0, []
    for i in range(count):
        if i:
            t += rng.expovariate(rate)
        out.append(t)
    return out


def make_phase(
    name: str,
    description: str,
    rate: float,
    count: int,
    service: Lognormal,
    seed: int,
) -> Phase:
    """Poisson arrivals at ``rate`` with lognormal service times, both from ``seed``.

    Arrivals and service times come from separate generators, so the same seed gives the
    same service times whatever the rate.
    """
    arrivals = poisson_arrivals(rate, count, random.Random(seed))
    rng = random.Random(seed + 1)
    requests = tuple(Request(at, round(service.sample_ms(rng), 3)) for at in arrivals)
    return Phase(name, description, rate, requests)


def fixed_rate_offsets(rate: float, duration: float, rng: random.Random) -> list[float]:
    """Poisson send times at ``rate``/s during ``duration`` seconds (open-loop load)."""
    return poisson_arrivals(rate, max(1, round(rate * duration)), rng)


@dataclass(frozen=True, slots=True)
class QualityPlan:
    servers: int
    service: Lognormal
    loads: tuple[float, ...]  # fractions of capacity
    per_load: int
    burst_load: float
    burst_count: int

    @property
    def capacity(self) -> float:
        return capacity(self.servers, self.service.mean_ms / 1000.0)


def quality_plan(quick: bool, smoke: bool = False) -> QualityPlan:
    """8 one-slot replicas, lognormal service (median 200 ms, p99 2 s), 70 % and 90 % load,
    then a burst at 3x capacity. ``smoke``: 2 replicas, service 10x shorter, a dozen
    requests per phase (a run of seconds that only shows the scenario still works)."""
    if smoke:
        return QualityPlan(
            servers=2,
            service=Lognormal.from_p99(20.0, 200.0),
            loads=(0.7, 0.9),
            per_load=12,
            burst_load=3.0,
            burst_count=8,
        )
    return QualityPlan(
        servers=8,
        service=Lognormal.from_p99(200.0, 2000.0),
        loads=(0.7, 0.9),
        per_load=200 if quick else 1000,
        burst_load=3.0,
        burst_count=40 if quick else 150,
    )


def quality_phases(plan: QualityPlan, seed: int) -> list[Phase]:
    cap = plan.capacity
    phases = [
        make_phase(
            f"{round(load * 100)}%",
            f"Poisson at {load:.0%} of capacity ({load * cap:.1f} req/s), {plan.per_load} requests",
            load * cap,
            plan.per_load,
            plan.service,
            phase_seed(seed, i),
        )
        for i, load in enumerate(plan.loads)
    ]
    rate = plan.burst_load * cap
    phases.append(
        make_phase(
            "burst",
            f"{plan.burst_count} requests at {plan.burst_load:g}x capacity "
            f"({rate:.1f} req/s), then drain",
            rate,
            plan.burst_count,
            plan.service,
            phase_seed(seed, len(plan.loads)),
        )
    )
    return phases
