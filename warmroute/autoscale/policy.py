"""The scaling decision: a pure function of one pool's demand and its bounds.

Two ways to scale up (``autoscale.mode``): ``every_wait`` (``decide``) asks one replica
per waiter that capacity on its way does not cover; ``predictive``
(``decide_predictive``) weighs the predicted wait on warm replicas against a cold start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from warmroute.config import AutoscaleConfig
from warmroute.state import forecast
from warmroute.state.forecast import Decision, Supply


@dataclass(frozen=True, slots=True)
class Demand:
    """One pool, now."""

    waiting: int  # requests queued for a slot
    in_flight: int  # slots busy on the pool's servers (every pool's leases, external load)
    target: int  # replicas asked of the platform (spec.replicas)
    known: int  # replicas discovered (any phase but gone)
    loading_slots: int  # slots on discovered replicas that are not warm yet
    slots_per_replica: int
    idle_for: float  # seconds with no request waiting and no server busy


def decide(d: Demand, cfg: AutoscaleConfig) -> int | None:
    """The new replica target, or None to leave it.

    Scale up when waiting requests exceed the capacity already on its way (replicas still
    loading, and replicas asked for but not yet discovered): one replica per
    ``slots_per_replica`` uncovered waiters, within ``max_replicas``. Scale down to
    ``min_replicas`` once the pool has been idle for ``idle_seconds``. Never below min.
    """
    if d.target < cfg.min_replicas:
        return cfg.min_replicas
    if d.waiting > 0:
        coming = d.loading_slots + max(0, d.target - d.known) * d.slots_per_replica
        uncovered = d.waiting - coming
        if uncovered <= 0 or d.target >= cfg.max_replicas:
            return None
        return min(cfg.max_replicas, d.target + math.ceil(uncovered / d.slots_per_replica))
    if d.in_flight == 0 and d.idle_for >= cfg.idle_seconds and d.target > cfg.min_replicas:
        return cfg.min_replicas
    return None


def decide_predictive(
    d: Demand, supply: Supply, cfg: AutoscaleConfig, queue_timeout: float
) -> tuple[int | None, Decision | None]:
    """``mode: predictive``: the new target (None to leave it) and, when requests wait,
    the wait-or-start decision behind it (``warmroute.state.forecast.decide``).

    Bounds and scaling down are ``decide``'s; only the scale-up differs: a replica is
    started when it would serve the last waiter sooner than the slots there are or are
    coming, or when that waiter would otherwise time out; not for every uncovered waiter.
    """
    if d.target < cfg.min_replicas or d.waiting <= 0:
        return decide(d, cfg), None
    choice = forecast.decide(
        supply,
        queue_timeout=queue_timeout,
        slots_per_replica=d.slots_per_replica,
        room=max(0, cfg.max_replicas - d.target),
    )
    return (d.target + choice.scale_up if choice.scale_up > 0 else None), choice
