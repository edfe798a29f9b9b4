"""A replica of a model server, its lifecycle phase, and the capacity of its address.

One address (``ip:port``) is one model server, whatever pools list it. A config reload
may move it from one pool to another while the first pool's requests still run on it,
and a retired pool keeps its leases until they end. So slots are counted per address,
not per (pool, address): every pool's ``Replica`` for an address shares one
``Capacity``, which counts the leases on it across all pools. A pool may lease a replica
only while ``capacity.leased + replica.external < capacity.slots``.

When pools disagree on an address's slots, the smaller wins: ``capacity.slots`` is the
smallest ``slots`` among its replicas that are not GONE (a GONE replica only lingers
until its leases end, so its figure is stale). It is never above the leasing pool's own
``slots``, so a pool never leases beyond what it was told either.

Tokens (pools with ``tokens:``, see ``warmroute.state.tokens``) follow the same rule: the
address's ``tokens`` budget is the smallest ``capacity`` among the token pools that list
it and are not done with it (None: no token pool lists it, no budget), and
``tokens_leased`` is what its active leases reserved, every pool's. ``reserved`` holds
each reservation by lease id, so a lease's tokens are refunded exactly once, by whichever
pool ends it, wherever the address has moved since.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmroute.state.lease import Lease
    from warmroute.state.pool import Pool


class Phase(enum.Enum):
    """Where a replica is in its life. Only WARM replicas take new leases."""

    LOADING = "loading"  # up (or coming up) but its model is not loaded: never routable
    WARM = "warm"  # model loaded and healthy: routable
    DRAINING = "draining"  # finishing its in-flight requests, takes no new ones
    GONE = "gone"  # removed; kept only until its last lease ends


_GONE = Phase.GONE


class Capacity:
    """The slots of one address, shared by every pool's ``Replica`` for it.

    ``leased`` counts the active leases on the address across all pools, retired ones
    included; ``members`` maps each pool that knows the address to its ``Replica``.
    ``tokens``, ``tokens_leased`` and ``reserved`` (lease id -> tokens, only reservations
    above 0) are the token budget (module doc). Owned by the ``Registry`` (or by a lone
    ``Pool``) and mutated only by pools.
    """

    __slots__ = ("address", "leased", "members", "reserved", "slots", "tokens", "tokens_leased")

    def __init__(self, address: str, slots: int) -> None:
        self.address = address
        self.slots = slots
        self.leased = 0
        self.members: dict[Pool, Replica] = {}
        self.tokens: int | None = None
        self.tokens_leased = 0
        self.reserved: dict[str, int] = {}

    def refresh(self) -> None:
        """Recompute ``slots`` and ``tokens``: the smallest figures among the members not
        GONE (among all members if every one is GONE)."""
        members = self.members
        live = [r.slots for r in members.values() if r.phase is not _GONE]
        if live:
            self.slots = min(live)
        elif members:
            self.slots = min(r.slots for r in members.values())
        budgets = [
            (r.phase is _GONE, spec.capacity)
            for pool, r in members.items()
            if (spec := pool.spec.tokens) is not None
        ]
        if any(not gone for gone, _ in budgets):
            budgets = [b for b in budgets if not b[0]]
        self.tokens = min((capacity for _, capacity in budgets), default=None)

    def fits(self, tokens: int) -> bool:
        """True if ``tokens`` more may be reserved here now."""
        budget = self.tokens
        return budget is None or self.tokens_leased + tokens <= budget

    def leases(self) -> list[Lease]:
        """The active leases on this address, every pool's (retired ones included)."""
        return [lease for replica in self.members.values() for lease in replica.leases.values()]

    def __repr__(self) -> str:
        tokens = "" if self.tokens is None else f" tokens={self.tokens_leased}/{self.tokens}"
        return (
            f"Capacity({self.address} {self.leased}/{self.slots}{tokens} pools={len(self.members)})"
        )


class Replica:
    """One pool's view of one model-server endpoint. Owned and mutated only by its ``Pool``.

    ``address`` is ``ip:port``, exactly the string Envoy's override_host policy matches.
    ``slots`` is what this pool's discovery reports; ``leases`` indexes this pool's active
    leases on it (lease id -> lease, in grant order), so an event about one replica touches
    only its own leases; ``in_flight`` is their number. ``capacity`` is shared with other
    pools' replicas of the same address and decides what is free. ``external`` counts slots
    busy with traffic warmroute did not lease (seen in the replica's own metrics); they are
    not free. It is the larger of two estimates of the same thing: ``scraped`` (the
    replica's own metrics: what it runs beyond every pool's leases) and ``unleased`` (what
    Envoys report in progress beyond them, or a start's fence: ``state.inflight``).
    """

    __slots__ = (
        "address",
        "capacity",
        "external",
        "in_flight",
        "last_used",
        "leased_total",
        "leases",
        "phase",
        "scraped",
        "slots",
        "unleased",
    )

    def __init__(
        self,
        address: str,
        slots: int,
        phase: Phase = Phase.LOADING,
        capacity: Capacity | None = None,
    ) -> None:
        self.address = address
        self.slots = slots
        self.phase = phase
        self.capacity = Capacity(address, slots) if capacity is None else capacity
        self.leases: dict[str, Lease] = {}
        self.in_flight = 0
        self.external = 0
        self.scraped = 0
        self.unleased = 0
        self.last_used = 0.0
        self.leased_total = 0

    @property
    def free(self) -> int:
        """Slots that may be leased now, counting every pool's leases (0 unless WARM)."""
        if self.phase is not Phase.WARM:
            return 0
        c = self.capacity
        return max(0, c.slots - c.leased - self.external)

    @property
    def busy(self) -> int:
        """Slots busy on the server: every pool's leases on the address plus external load."""
        return self.capacity.leased + self.external

    def __repr__(self) -> str:
        c = self.capacity
        return (
            f"Replica({self.address} {self.phase.value} "
            f"{self.in_flight}/{self.slots} all={c.leased}/{c.slots} ext={self.external})"
        )
