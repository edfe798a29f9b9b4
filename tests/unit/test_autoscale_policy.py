from __future__ import annotations

import pytest

from warmroute.autoscale.policy import Demand, decide
from warmroute.config import AutoscaleConfig

CFG = AutoscaleConfig(min_replicas=0, max_replicas=4, idle_seconds=60)


def _d(**kw: float) -> Demand:
    base = dict(
        waiting=0, in_flight=0, target=0, known=0, loading_slots=0, slots_per_replica=1,
        idle_for=0.0,
    )  # fmt: skip
    base.update(kw)
    return Demand(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("demand", "expected"),
    [
        (_d(waiting=1), 1),  # a request at zero asks for a replica at once
        (_d(waiting=3), 3),  # one per uncovered waiter
        (_d(waiting=9), 4),  # capped at max
        (_d(waiting=3, target=1, known=0), 3),  # 1 asked for, not yet seen: covers one
        (_d(waiting=2, target=2, known=2, loading_slots=2), None),  # capacity on its way
        (_d(waiting=3, target=2, known=2, loading_slots=1), 4),
        (_d(waiting=5, target=4, known=4), None),  # at max: nothing more to do
        (_d(waiting=4, slots_per_replica=2), 2),  # multi-slot replicas
        (_d(target=3, idle_for=61), 0),  # idle long enough: down to min
        (_d(target=3, idle_for=59), None),  # not yet
        (_d(target=3, idle_for=120, in_flight=1), None),  # never while serving
        (_d(target=0, idle_for=120), None),  # already at min
    ],
)
def test_decide(demand: Demand, expected: int | None) -> None:
    assert decide(demand, CFG) == expected


def test_never_below_min() -> None:
    cfg = AutoscaleConfig(min_replicas=2, max_replicas=4, idle_seconds=1)
    assert decide(_d(target=0), cfg) == 2
    assert decide(_d(target=3, idle_for=10), cfg) == 2
