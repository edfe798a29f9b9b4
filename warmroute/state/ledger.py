"""The ledger of one pool: granting and ending leases, and what each does to the books.

Every lease moves the same figures, wherever it was granted (at once or to a waiter) and
however it ends (released, cancelled, expired, reconciled, revoked):

* the registry-wide indexes (lease id -> lease; Envoy's request id -> lease);
* its replica's own index (``Replica.leases``, ``in_flight``) and lifetime count;
* its address's ``Capacity`` (``leased``, shared by every pool that lists the address)
  and, in a pool with a token budget, its token reservation (``Capacity.reserved``),
  refunded exactly once, by whichever pool ends it;
* the pool's counters and its learned service time (``Forecast``), on a normal end.

``grant`` and ``end`` are the only writers of those figures; ``undo`` takes back a grant
its requester refused (as if it never happened); ``reclaim`` ends the oldest leases of a
replica that reports fewer requests than it was leased. Synchronous; owned by its pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warmroute.state.lease import EndReason, Lease
from warmroute.state.replica import Phase, Replica

if TYPE_CHECKING:
    from warmroute.state.pool import Pool

Clock = Callable[[], float]
IdFactory = Callable[[], str]


@dataclass(slots=True)
class PoolCounters:
    """Monotonic counters; read by the metrics adapter."""

    granted_immediately: int = 0
    granted_after_wait: int = 0
    released: int = 0
    expired: int = 0
    reconciled: int = 0
    cancelled_leases: int = 0
    waits_cancelled: int = 0
    waits_timed_out: int = 0
    rejected_queue_full: int = 0
    displaced: int = 0
    ended: dict[str, int] = field(default_factory=dict)


class Ledger:
    """Grants and ends the leases of ``pool`` (see the module doc).

    ``leases`` and ``by_request`` are the registry-wide indexes, shared by every pool.
    ``forget(replica)`` is called when a GONE replica's last lease ends.
    """

    __slots__ = ("_by_request", "_clock", "_forget", "_leases", "_new_id", "counters", "pool")

    def __init__(
        self,
        pool: Pool,
        *,
        clock: Clock,
        new_id: IdFactory,
        leases: dict[str, Lease],
        by_request: dict[str, Lease],
        forget: Callable[[Replica], None],
    ) -> None:
        self.pool = pool
        self._clock = clock
        self._new_id = new_id
        self._leases = leases
        self._by_request = by_request
        self._forget = forget
        self.counters = PoolCounters()

    def grant(self, replica: Replica, request_id: str, tokens: int = 0) -> Lease:
        """A new lease on ``replica`` (the caller checked it is free), reserving
        ``tokens`` on its address if above 0."""
        pool = self.pool
        spec = pool.spec
        now = self._clock()
        lease = Lease(
            self._new_id(),
            request_id,
            pool,
            replica,
            now,
            now + spec.max_request_seconds + spec.lease_grace_seconds,
        )
        replica.leases[lease.id] = lease
        replica.in_flight += 1
        capacity = replica.capacity
        capacity.leased += 1
        replica.leased_total += 1
        replica.last_used = now
        self._leases[lease.id] = lease
        if request_id:
            self._by_request[request_id] = lease
        if tokens > 0:
            capacity.reserved[lease.id] = tokens
            capacity.tokens_leased += tokens
        return lease

    def end(self, lease: Lease, reason: EndReason) -> None:
        """End an active lease of this pool: every figure its grant moved moves back."""
        lease.ended = reason
        # What ``_drop`` does, inlined: this is the request hot path, where a method call
        # per release is a measurable share of the work.
        self._leases.pop(lease.id, None)
        if self._by_request.get(lease.request_id) is lease:
            del self._by_request[lease.request_id]
        replica = lease.replica
        del replica.leases[lease.id]
        replica.in_flight -= 1
        capacity = replica.capacity
        capacity.leased -= 1
        if capacity.reserved:
            capacity.tokens_leased -= capacity.reserved.pop(lease.id, 0)
        replica.last_used = now = self._clock()
        if reason is EndReason.FINISHED:
            self.pool.forecast.service.observe(now - lease.acquired_at)
        c = self.counters
        c.released += 1
        key = reason.value  # an enum's value is a property: read it once
        c.ended[key] = c.ended.get(key, 0) + 1
        if reason is EndReason.EXPIRED:
            c.expired += 1
        elif reason is EndReason.CANCELLED:
            c.cancelled_leases += 1
        if replica.phase is Phase.GONE and replica.in_flight == 0:
            self._forget(replica)

    def undo(self, lease: Lease, last_used: float) -> None:
        """Take back a grant its requester refused, as if it had never been made (the
        replica's ``last_used`` goes back to ``last_used``, its lifetime count down)."""
        lease.ended = EndReason.CANCELLED
        self._drop(lease)
        replica = lease.replica
        replica.leased_total -= 1
        replica.last_used = last_used

    def _drop(self, lease: Lease) -> None:
        self._leases.pop(lease.id, None)
        if self._by_request.get(lease.request_id) is lease:
            del self._by_request[lease.request_id]
        replica = lease.replica
        del replica.leases[lease.id]
        replica.in_flight -= 1
        capacity = replica.capacity
        capacity.leased -= 1
        if capacity.reserved:
            # Popped, so a lease's tokens are refunded exactly once.
            capacity.tokens_leased -= capacity.reserved.pop(lease.id, 0)

    def reclaim(self, replica: Replica, count: int) -> list[Lease]:
        """End up to ``count`` of this pool's leases on ``replica`` as RECONCILED: the
        oldest older than ``reconcile_after_seconds`` (younger ones may not have reached
        the replica, or Envoy's count, yet). Returns them; dispatches nothing."""
        cutoff = self._clock() - self.pool.spec.reconcile_after_seconds
        # In grant order, which is acquisition order; sorted anyway (a stable sort of a
        # handful) so an injected clock that steps back cannot reorder them.
        stale = sorted(
            (lease for lease in replica.leases.values() if lease.acquired_at <= cutoff),
            key=lambda lease: lease.acquired_at,
        )
        reclaimed = stale[:count]
        for lease in reclaimed:
            self.end(lease, EndReason.RECONCILED)
        self.counters.reconciled += len(reclaimed)
        return reclaimed
