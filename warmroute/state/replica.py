"""A replica of a model server and its lifecycle phase."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """Where a replica is in its life. Only WARM replicas take new leases."""

    LOADING = "loading"  # up (or coming up) but its model is not loaded: never routable
    WARM = "warm"  # model loaded and healthy: routable
    DRAINING = "draining"  # finishing its in-flight requests, takes no new ones
    GONE = "gone"  # removed; kept only until its last lease ends


class Replica:
    """One model-server endpoint. Owned and mutated only by its ``Pool``.

    ``address`` is ``ip:port``, exactly the string Envoy's override_host policy matches.
    ``external`` counts slots busy with traffic warmroute did not lease (seen in the
    replica's own metrics); they are not free.
    """

    __slots__ = ("address", "external", "in_flight", "last_used", "leased_total", "phase", "slots")

    def __init__(self, address: str, slots: int, phase: Phase = Phase.LOADING) -> None:
        self.address = address
        self.slots = slots
        self.phase = phase
        self.in_flight = 0
        self.external = 0
        self.last_used = 0.0
        self.leased_total = 0

    @property
    def free(self) -> int:
        """Slots that may be leased now (0 unless WARM)."""
        if self.phase is not Phase.WARM:
            return 0
        return max(0, self.slots - self.in_flight - self.external)

    def __repr__(self) -> str:
        return (
            f"Replica({self.address} {self.phase.value} "
            f"{self.in_flight}/{self.slots} ext={self.external})"
        )
