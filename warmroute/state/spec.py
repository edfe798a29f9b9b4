"""A pool's spec: what the core needs to know about a pool, as one immutable value.

Built from the validated config (``warmroute.config.PoolConfig.spec``) and replaced whole
on a reload (``Pool.set_spec``); the core never reads the config itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from warmroute.state.affinity import AffinitySpec
from warmroute.state.outlier import OutlierSpec
from warmroute.state.priority import PrioritySpec
from warmroute.state.tokens import TokenSpec


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What the core needs to know about a pool (built from the validated config)."""

    name: str
    models: tuple[str, ...]
    max_waiting: int = 1000
    queue_timeout: float = 30.0
    max_request_seconds: float = 600.0
    # Envoy's route timeout (max_request_seconds) starts after the lease is granted, so the
    # lease lives a little longer: it is never reclaimed while Envoy may still use it.
    lease_grace_seconds: float = 5.0
    # A lease younger than this is never reclaimed by reconciliation: its request may not
    # have reached the replica (or its metrics) yet.
    reconcile_after_seconds: float = 5.0
    # A token budget per replica (None: slots only); see ``warmroute.state.tokens``.
    tokens: TokenSpec | None = None
    # The pick profile (``warmroute.state.picker.PROFILES``).
    policy: str = "least_loaded"
    # Bands and fairness (None: one FIFO). ``max_waiting`` still bounds the whole queue;
    # each band also has its own bound and queue timeout.
    priority: PrioritySpec | None = None
    # With policy prefix_affinity: what the prefix and session scorers remember.
    affinity: AffinitySpec | None = None
    # Replicas whose requests fail stop getting leases for a while (None: never).
    outlier: OutlierSpec | None = None
