"""What the predictive scenario measures and the shape of its results: the bursty trace
(``--quick`` and ``--smoke`` shrink it), the pool's replicas and timeouts, replica-seconds
as an integral over scale calls, and ``Run``: one contender's outcomes and scale steps.
Pure. Shared by the scenario (``predictive``) and its page (``predictive_report``);
imports neither.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.lib.loadgen import Outcome
from bench.lib.stats import percentile
from bench.lib.trace import Lognormal, Request, phase_seed

POOL = "main"


@dataclass(frozen=True, slots=True)
class Plan:
    bursts: tuple[int, ...]  # requests per burst, in order
    gap: float  # seconds between the starts of two bursts
    spread: float  # a burst's arrivals are a Poisson stream over about this long
    service: Lognormal = field(default_factory=lambda: Lognormal(200.0, 0.5))
    load_seconds: float = 3.0
    slots: int = 2
    min_replicas: int = 2
    max_replicas: int = 6
    idle_seconds: float = 4.0
    queue_timeout: float = 60.0
    warmup_requests: int = 8  # sequential, before the trace: a service time to learn

    @property
    def contenders(self) -> list[tuple[str, str | None]]:
        """(name, autoscale mode; None: no scaling)."""
        return [("predictive", "predictive"), ("every_wait", "every_wait"), ("no scaling", None)]


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:  # one short burst, fast replicas: seconds per contender
        return Plan(bursts=(8,), gap=1.0, spread=0.2, service=Lognormal(50.0, 0.5),
                    load_seconds=0.3, min_replicas=1, max_replicas=2, idle_seconds=1.0,
                    queue_timeout=20.0, warmup_requests=2)  # fmt: skip
    if quick:
        return Plan(bursts=(12, 120, 12), gap=10.0, spread=0.5)
    return Plan(bursts=(12, 40, 12, 120, 12, 40, 120, 12), gap=12.0, spread=0.5)


# -- pure parts (tests/bench/test_bench_predictive.py) --------------------------------------


def bursty_trace(p: Plan, seed: int) -> list[Request]:
    """The trace: burst ``i`` starts at ``i * gap``; its requests arrive as a Poisson stream
    of ``size / spread`` per second; each has a lognormal service time. Sorted by arrival."""
    out: list[Request] = []
    for i, size in enumerate(p.bursts):
        rng = random.Random(phase_seed(seed, i))
        t = i * p.gap
        rate = size / p.spread
        for _ in range(size):
            out.append(Request(round(t, 6), round(p.service.sample_ms(rng), 3)))
            t += rng.expovariate(rate)
    out.sort(key=lambda r: r.at)
    return out


def replica_seconds(steps: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """The integral over [start, end] of a replica count that changes at ``steps`` (time,
    count after it), sorted by time; before the first step the count is 0."""
    if end <= start:
        return 0.0
    total, count, at = 0.0, 0, start
    for t, n in steps:
        if t > start:
            total += count * (min(t, end) - at)
            at = min(t, end)
        if t >= end:
            return total
        count = n
    return total + count * (end - at)


def summarize(latencies: Sequence[float]) -> tuple[float, float, float]:
    """p50, p99 and max of the latencies (seconds), NaN if there are none."""
    if not latencies:
        return math.nan, math.nan, math.nan
    return percentile(latencies, 50), percentile(latencies, 99), max(latencies)


@dataclass
class Run:
    """One contender's run; times in seconds from the trace's start."""

    name: str
    outcomes: list[Outcome]
    steps: list[tuple[float, int]]  # (t, replicas after a scale call)
    end: float  # end of the replica-seconds window
    forecast: dict[str, Any] | None = None
    decisions: list[str] = field(default_factory=list)

    @property
    def ok_latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def rejected(self) -> int:
        return sum(o.status == 503 for o in self.outcomes)

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def replica_seconds(self) -> float:
        return replica_seconds(self.steps, 0.0, self.end)

    @property
    def scale_ups(self) -> int:
        return sum(1 for a, b in zip(self.steps, self.steps[1:], strict=False) if b[1] > a[1])
