"""Leases: the right to send one request to one replica slot."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmroute.state.pool import Pool
    from warmroute.state.replica import Replica


class EndReason(enum.Enum):
    """Why a lease ended."""

    FINISHED = "finished"  # Envoy logged the request's end (success, error or disconnect)
    CANCELLED = "cancelled"  # granted but never used (client went away before routing)
    EXPIRED = "expired"  # its end was never reported; reclaimed at its deadline
    RECONCILED = "reconciled"  # the replica's own metrics say the request is no longer there
    REVOKED = "revoked"  # the pool went away


class Lease:
    """A handle on one slot of one replica.

    ``id`` is unguessable; it travels only in Envoy's dynamic metadata, never in a header
    a client could see or send. ``release()`` is idempotent: the first call frees the slot
    and dispatches the next waiter; later calls return False and do nothing.
    Not thread-safe: use from the thread (event loop) that owns the registry.
    """

    __slots__ = ("_pool", "acquired_at", "deadline", "ended", "id", "replica", "request_id")

    def __init__(
        self,
        lease_id: str,
        request_id: str,
        pool: Pool,
        replica: Replica,
        acquired_at: float,
        deadline: float,
    ) -> None:
        self.id = lease_id
        self.request_id = request_id
        self._pool = pool
        self.replica = replica
        self.acquired_at = acquired_at
        self.deadline = deadline
        self.ended: EndReason | None = None

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def address(self) -> str:
        return self.replica.address

    def release(self, reason: EndReason = EndReason.FINISHED) -> bool:
        """Free the slot. True the first time, False if already released."""
        return self._pool.release(self, reason)

    def __repr__(self) -> str:
        state = self.ended.value if self.ended else "active"
        return f"Lease({self.id[:8]} req={self.request_id} {self.replica.address} {state})"
