"""Immutable views of the registry, safe to hand to other tasks, JSON and metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)


@dataclass(frozen=True, slots=True)
class RegistryView:
    pools: tuple[PoolView, ...]
    leases: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
