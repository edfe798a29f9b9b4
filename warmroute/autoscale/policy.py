"""The scaling decision: a pure function of one pool's demand and its bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from warmroute.config import AutoscaleConfig


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
