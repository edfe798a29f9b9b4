"""What the coldstart scenario measures and the shape of its results: the timeline (poll
periods, cold start, service time; ``--quick`` and ``--smoke`` scale it), the poller's
decision and phases, reading a gauge from ``/metrics``, and ``Rep``: one repetition's
times. Pure. Shared by the scenario (``coldstart``) and its page (``coldstart_report``);
imports neither.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from bench.lib.stats import percentile

POOL = "main"
TARGET_DECISION_S = 1.0  # "queued demand issues a scale-up within 1 s"
QUICK_SCALE = 0.1  # --quick: poll periods, cold start and service time all x 0.1


@dataclass(frozen=True, slots=True)
class Timeline:
    poll_periods: tuple[float, ...]  # seconds
    load_seconds: float  # a replica's cold start (model load), after its process starts
    service_ms: float  # each request's service time
    burst: int = 8
    slots: int = 1
    max_replicas: int = 4
    repetitions: int = 6
    queue_timeout: float = 120.0
    scale: float = 1.0  # 1 = real values; QUICK_SCALE with --quick

    @property
    def contenders(self) -> list[tuple[str, float | None]]:
        return [("warmroute", None), *((f"poll {fmt_s(p)} s", p) for p in self.poll_periods)]


def timeline(quick: bool, smoke: bool = False) -> Timeline:
    """Real KEDA/HPA periods by default; ``--quick`` scales the whole timeline down 10x
    (except process start-up, which is what it is); ``smoke`` also keeps one repetition,
    one poller, 4 requests on at most 2 replicas."""
    if smoke:
        return Timeline(
            poll_periods=(15.0 * QUICK_SCALE,),
            load_seconds=3.0 * QUICK_SCALE,
            service_ms=1000.0 * QUICK_SCALE,
            burst=4,
            max_replicas=2,
            repetitions=1,
            queue_timeout=30.0,
            scale=QUICK_SCALE,
        )
    scale = QUICK_SCALE if quick else 1.0
    return Timeline(
        poll_periods=(15.0 * scale, 30.0 * scale),
        load_seconds=3.0 * scale,
        service_ms=1000.0 * scale,
        scale=scale,
    )


def fmt_s(seconds: float) -> str:
    """Seconds as the pages and progress lines write them (``15``, ``1.5``)."""
    return f"{seconds:g}"


# -- pure parts (tests/bench/test_bench_coldstart.py) ---------------------------------------


def poll_phases(period: float, n: int, seed: int) -> list[float]:
    """``n`` offsets of the first poll after the burst, in [0, period): one uniform draw in
    each of ``n`` equal strata (so few repetitions still cover the cycle), shuffled."""
    if n < 1 or period <= 0:
        raise ValueError(f"need n >= 1 and period > 0, got n={n}, period={period}")
    rng = random.Random(seed)
    phases = [(i + rng.random()) * period / n for i in range(n)]
    rng.shuffle(phases)
    return phases


def desired_replicas(waiting: float, slots: int, current: int, max_replicas: int) -> int:
    """The poller's decision: one replica per ``slots`` waiting requests, within max; it
    never scales down here (KEDA's cooldown is minutes, the measurement seconds)."""
    want = min(max_replicas, math.ceil(max(waiting, 0) / slots))
    return max(current, want)


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def gauge(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``, in a Prometheus text
    exposition; None if there is none."""
    found = None
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            found = (found or 0.0) + float(m.group(3))
    return found


@dataclass
class Rep:
    """One repetition of one contender; times in seconds after the burst."""

    contender: str
    phase: float | None  # poller: first poll after the burst
    decision: float | None  # first set_replicas(n > 0)
    warm: float | None  # first replica leasable (sampled every 5 ms)
    first: float | None  # first successful response
    last: float | None  # last response, any status
    errors: int
    replicas: int  # replicas running at the end
    scale_calls: list[tuple[float, int]] = field(default_factory=list)
    polls: list[tuple[float, float, int]] = field(default_factory=list)  # (t, waiting, set)


def median_and_worst(values: list[float | None]) -> tuple[float, float]:
    """Median and maximum, NaN if any repetition lacks the value (it never happened)."""
    if not values or any(v is None for v in values):
        return math.nan, math.nan
    got = [v for v in values if v is not None]
    return percentile(got, 50), max(got)
