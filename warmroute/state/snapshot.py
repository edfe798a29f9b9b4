"""Immutable views of the registry, safe to hand to other tasks, JSON and metrics.

Two kinds of "how many in flight", and they differ when pools share an address:
``in_flight`` counts one pool's leases on a replica; ``busy`` counts the slots busy on
the model server itself, every pool's leases plus load warmroute did not lease. Ask
``busy`` for "how busy is this GPU" (scaling down, deletion costs, saturation), and
``in_flight`` for "what is this pool doing".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from warmroute.state.forecast import ForecastView
from warmroute.state.replica import Phase


@dataclass(frozen=True, slots=True)
class ReplicaView:
    address: str
    phase: str
    slots: int
    in_flight: int
    external: int
    leased_total: int
    # Slots free right now, across every pool leasing this address (0 unless warm).
    free: int = 0
    # Slots busy on the server: every pool's leases on the address plus external load.
    busy: int = 0
    # Token budget of the address (None: no pool with ``tokens:`` lists it), the tokens
    # this pool's leases on it reserved, and every pool's (``warmroute.state.tokens``).
    tokens: int | None = None
    tokens_leased: int = 0
    tokens_busy: int = 0
    # Beyond every pool's leases: what the replica's metrics show (``scraped``), what
    # Envoys report in progress (``unleased``; the fence's bound while ``fenced``), and
    # the Envoys' own count of requests in progress there (``state.inflight``).
    scraped: int = 0
    unleased: int = 0
    envoy_in_progress: int = 0
    fenced: int | None = None


@dataclass(frozen=True, slots=True)
class PoolView:
    name: str
    models: tuple[str, ...]
    replicas: tuple[ReplicaView, ...]
    waiting: int
    max_waiting: int
    granted_immediately: int
    granted_after_wait: int
    expired: int
    reconciled: int
    rejected_queue_full: int
    waits_timed_out: int
    waits_cancelled: int
    # Learned service and cold-start times, and the last wait-or-scale decision.
    forecast: ForecastView | None = None

    @property
    def in_flight(self) -> int:
        """This pool's active leases."""
        return sum(r.in_flight for r in self.replicas)

    @property
    def busy(self) -> int:
        """Busy slots on this pool's servers, every pool's leases and external load."""
        return sum(r.busy for r in self.replicas)

    @property
    def tokens_leased(self) -> int:
        """Tokens this pool's active leases reserved."""
        return sum(r.tokens_leased for r in self.replicas)

    @property
    def tokens(self) -> int | None:
        """Token budget of this pool's warm replicas (None: no budget on any)."""
        budgets = [r.tokens for r in self.replicas if r.tokens is not None and r.phase == "warm"]
        return sum(budgets) if budgets else None


@dataclass(frozen=True, slots=True)
class FenceView:
    """The start's fence (``state.inflight``): up, why, since when (registry clock), the
    addresses still held with their bound, and how many were lifted by what."""

    active: bool = False
    reason: str = ""
    since: float = 0.0
    held: dict[str, int] = field(default_factory=dict)
    lifted: dict[str, int] = field(default_factory=dict)
    reporting_envoys: int = 0


@dataclass(frozen=True, slots=True)
class RegistryView:
    pools: tuple[PoolView, ...]
    leases: int
    fence: FenceView = field(default_factory=FenceView)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica of a pool as a scaling decision sees it."""

    address: str
    phase: Phase
    slots: int  # this pool's figure, from its discovery
    in_flight: int  # this pool's leases on it
    busy: int  # the server's busy slots: every pool's leases plus external load


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """One pool's demand and supply now (``Registry.load``): cheap, no full view built."""

    waiting: int  # requests queued for a slot
    replicas: tuple[ReplicaLoad, ...]  # every replica the pool knows, GONE ones included

    @property
    def in_flight(self) -> int:
        """This pool's active leases."""
        return sum(r.in_flight for r in self.replicas)

    @property
    def busy(self) -> int:
        """Busy slots on the pool's servers, counted per server across all pools."""
        return sum(r.busy for r in self.replicas)

    @property
    def live(self) -> tuple[ReplicaLoad, ...]:
        """The replicas that are not GONE."""
        return tuple(r for r in self.replicas if r.phase is not Phase.GONE)

    def slots_in(self, phase: Phase) -> int:
        """This pool's slots on its replicas in ``phase``."""
        return sum(r.slots for r in self.replicas if r.phase is phase)
