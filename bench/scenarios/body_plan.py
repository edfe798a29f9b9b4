"""What the body scenario measures and the shape of its results: the loads (body size,
rate), the variants (stack x header), how long each step runs, the order of a round, and
``Sample``/``Cell`` holding what was measured. Shared by the scenario (``body``) and its page
(``body_report``); imports neither."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from bench.lib.contenders.base import Backends
from bench.lib.loadgen import Outcome
from bench.lib.measure import RateRun
from bench.lib.stats import percentile

# (body bytes, requests/s): a fixed, moderate rate per size; 200 KB also at a rate where
# this 2-core machine, shared with other work, no longer keeps up with every variant.
LOADS = ((1024, 200), (200 * 1024, 50), (200 * 1024, 100))
SIZES = tuple(sorted({size for size, _ in LOADS}))
Load = tuple[int, int]
BACKENDS = Backends(replicas=4, slots=1000, procs=2)
PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    stack: str  # "plain", "B" or "A"
    header: bool  # the x-model header is sent too
    label: str


VARIANTS = (
    Variant("plain", "plain", False, "plain Envoy (round robin)"),
    Variant("B-header", "B", True, "B json_to_metadata, x-model header"),
    Variant("B-body", "B", False, "B json_to_metadata, model in body"),
    Variant("A-header", "A", True, "A ext_proc BUFFERED, x-model header"),
    Variant("A-body", "A", False, "A ext_proc BUFFERED, model in body"),
)


@dataclass(frozen=True)
class Plan:
    seconds: float  # measured per (size, variant) and round
    warm_seconds: float  # sent first at the same rate, not measured
    rounds: int
    idle_seconds: float  # each stack's idle CPU, measured once
    quiet_cpus: float  # before each measurement, wait until others use at most this,
    quiet_wait: float  # but no longer than this (seconds),
    quiet_budget: float  # and no longer than this over the whole run


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:  # a fraction of a second per cell, no waiting for a quiet machine
        return Plan(seconds=0.2, warm_seconds=0.1, rounds=1, idle_seconds=0.2,
                    quiet_cpus=1.0, quiet_wait=0.0, quiet_budget=0.0)  # fmt: skip
    if quick:
        return Plan(seconds=3.0, warm_seconds=1.0, rounds=1, idle_seconds=2.0,
                    quiet_cpus=0.3, quiet_wait=3.0, quiet_budget=15.0)  # fmt: skip
    return Plan(seconds=5.0, warm_seconds=2.0, rounds=3, idle_seconds=5.0,
                quiet_cpus=0.3, quiet_wait=5.0, quiet_budget=60.0)  # fmt: skip


@dataclass
class Sample:
    """One measured run of one (load, variant)."""

    run: RateRun
    tx: dict[str, float]  # bytes Envoy wrote: "control plane", "replicas"
    machine_busy: float  # CPU seconds the whole machine used meanwhile
    idle: dict[str, float]  # CPU seconds per second, by role, of this stack at rest

    def latency_ms(self, q: float) -> float:
        return percentile([o.latency * 1e3 for o in self.run.outcomes if o.ok], q)

    def cpu_per_request(self, role: str) -> float:
        """CPU seconds of ``role`` per request sent, net of its idle use."""
        return net_per_request(
            [self.run.cpu[role]], [self.run.seconds], self.idle.get(role, 0.0), self.requests
        )

    def bytes_per_request(self, where: str) -> float:
        return self.tx[where] / max(self.requests, 1)

    @property
    def requests(self) -> int:
        return len(self.run.outcomes)

    @property
    def others_share(self) -> float:
        """CPUs the machine used besides this stack and the load generator."""
        others = self.machine_busy - sum(self.run.cpu.values())
        return others / self.run.seconds if self.run.seconds else 0.0


@dataclass
class Cell:
    """One (load, variant): its samples, one per round; headline numbers are medians over
    rounds, so one round disturbed by the machine's other load does not decide them."""

    variant: Variant
    size: int
    rate: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for s in self.samples for o in s.run.outcomes]

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    def latency_ms(self, q: float) -> float:
        return median_of([s.latency_ms(q) for s in self.samples])

    @property
    def achieved(self) -> float:
        return median_of([s.run.achieved for s in self.samples])

    def cpu_per_request(self, role: str) -> float | None:
        """Median over rounds of ``role``'s CPU seconds per request; None if no such role."""
        if not self.samples or role not in self.samples[0].run.cpu:
            return None
        return median_of([s.cpu_per_request(role) for s in self.samples])

    def bytes_per_request(self, where: str) -> float | None:
        if not self.samples or where not in self.samples[0].tx:
            return None
        return median_of([s.bytes_per_request(where) for s in self.samples])


def median_of(values: list[float]) -> float:
    """The median; NaN for no values (a NaN among them sorts anywhere: avoid passing one)."""
    return statistics.median(values) if values else math.nan


def net_per_request(
    cpu: list[float], seconds: list[float], idle_rate: float, requests: int
) -> float:
    """(CPU seconds used - idle rate x wall seconds) / requests, summed over runs."""
    if requests <= 0:
        return float("nan")
    return (sum(cpu) - idle_rate * sum(seconds)) / requests


def schedule(rounds: int) -> list[list[tuple[Load, Variant]]]:
    """Per round, the (load, variant) order: forward in even rounds, backward in odd ones,
    so a steady drift in the machine's load weighs on every variant alike."""
    order = [(load, v) for load in LOADS for v in VARIANTS]
    return [order if r % 2 == 0 else order[::-1] for r in range(rounds)]
