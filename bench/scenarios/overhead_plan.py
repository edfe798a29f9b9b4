"""What the overhead scenario measures: its two stacks, the rates, the replicas, the targets
and how long each step runs (``--quick``, ``--smoke``). Shared by the scenario
(``overhead``) and its page (``overhead_report``); imports neither."""

from __future__ import annotations

from dataclasses import dataclass

from bench.lib.contenders.base import Backends

PLAIN, ROUTED = "envoy-rr", "warmroute"
LABELS = {PLAIN: "plain Envoy", ROUTED: "Envoy + warmroute"}
RATES = (200, 500, 1000, 2000)
BACKENDS = Backends(replicas=4, slots=1000, procs=2)
TARGET_P50_MS, TARGET_P99_MS, TARGET_RATE = 1.0, 3.0, 2000.0


@dataclass(frozen=True)
class Plan:
    seconds: float  # measured, per rate
    warm_seconds: float  # sent first at the same rate, not measured
    wrk_seconds: int  # 0: no saturation step (wrk left out)
    profile_rate: int
    profile_seconds: float
    rates: tuple[int, ...] = RATES


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:
        return Plan(seconds=0.5, warm_seconds=0.2, wrk_seconds=1, profile_rate=200,
                    profile_seconds=0.5, rates=(200,))  # fmt: skip
    if quick:
        return Plan(seconds=3.0, warm_seconds=1.0, wrk_seconds=5, profile_rate=500,
                    profile_seconds=3.0)  # fmt: skip
    return Plan(seconds=15.0, warm_seconds=2.0, wrk_seconds=15, profile_rate=500,
                profile_seconds=10.0)  # fmt: skip
