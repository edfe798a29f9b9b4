"""The registry: every pool, replica, lease and waiter of one warmroute process.

This is the authoritative state. It is synchronous and does no I/O; adapters (ext_proc,
access log, discovery, metrics) call it from one event loop.

One address is one model server, however many pools list it: the registry keeps one
``Capacity`` per address, shared by every pool's replica for it, live and retired pools
alike, so moving a busy replica between pools (a config reload) never overbooks it. See
``warmroute.state.replica`` for the slot rule and ``warmroute.state.pool`` for dispatch
and the invariants.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

from warmroute.state.events import ReplicaEvent, ReplicaExternalLoad, ReplicaRemoved, ReplicaUpsert
from warmroute.state.inflight import InFlightBook
from warmroute.state.lease import EndReason, Lease
from warmroute.state.outlier import Backoff, Ejection, Outcome, Return
from warmroute.state.pool import Clock, IdFactory, Pool, PoolSpec
from warmroute.state.replica import Capacity, Replica
from warmroute.state.snapshot import PoolLoad, PoolView, RegistryView, ReplicaView


def _reserved(replica: Replica) -> int:
    """Tokens the replica's pool's leases on it reserved (0 at once without reservations)."""
    reserved = replica.capacity.reserved
    return sum(reserved.get(i, 0) for i in replica.leases) if reserved else 0


class Registry:
    """Pools by name, a model -> pool index and the lease index.

    Lease ids start with this registry's ``epoch`` (random per process) followed by 96
    random bits: a lease id is a capability, it must not be guessable, and an id with
    another epoch names a lease a previous process granted (``state.inflight``).
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        new_id: IdFactory | None = None,
        young_seconds: float = 0.25,
    ) -> None:
        self._clock = clock
        self.epoch = secrets.token_hex(4)
        self._new_id = new_id or self._new_lease_id
        self.leases: dict[str, Lease] = {}
        # Envoy's request id -> lease, for an end-of-request entry that lacks our metadata.
        self._by_request: dict[str, Lease] = {}
        self.pools: dict[str, Pool] = {}
        self._by_model: dict[str, Pool] = {}
        self._retired: list[Pool] = []
        # Address -> its slots across every pool (live or retired) that lists it.
        self._capacities: dict[str, Capacity] = {}
        # What runs on the replicas beyond our leases: a start's fence, Envoys' counts.
        self.inflight = InFlightBook(
            self._capacities,
            clock=clock,
            set_unleased=self._set_unleased,
            reclaim=self._reclaim,
            own_lease=lambda lease_id: lease_id.startswith(self.epoch),
            young_seconds=young_seconds,
        )

    def _new_lease_id(self) -> str:
        return self.epoch + secrets.token_hex(12)

    @staticmethod
    def _set_unleased(capacity: Capacity, unleased: int) -> None:
        for pool in list(capacity.members):
            pool.set_unleased(capacity.address, unleased)

    @staticmethod
    def _reclaim(capacity: Capacity, count: int) -> list[Lease]:
        reclaimed: list[Lease] = []
        for pool in list(capacity.members):
            reclaimed += pool.reclaim(capacity.address, count - len(reclaimed))
        return reclaimed

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def retired(self) -> tuple[Pool, ...]:
        """Pools dropped from the config that still have leases or waiters."""
        return tuple(self._retired)

    def capacity(self, address: str) -> Capacity | None:
        """The address's slots and leases across all pools, or None if no pool lists it."""
        return self._capacities.get(address)

    def configure(self, specs: Iterable[PoolSpec]) -> None:
        """Make the pools match ``specs``: add new, update changed, drop removed ones.

        A dropped pool's waiters stay until they time out or are cancelled and its
        leases stay until they end; it simply stops being found by model. Its replicas
        keep their share of their addresses' slots until it is idle and forgotten.
        """
        wanted = {s.name: s for s in specs}
        for name in list(self.pools):
            if name not in wanted:
                # Retired pools keep serving their waiters' timeouts until they are empty.
                self._retired.append(self.pools.pop(name))
        for name, spec in wanted.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = Pool(
                    spec,
                    clock=self._clock,
                    new_id=self._new_id,
                    leases=self.leases,
                    by_request=self._by_request,
                    capacities=self._capacities,
                )
            else:
                pool.set_spec(spec)
        self._by_model = {m: self.pools[s.name] for s in wanted.values() for m in s.models}

    def pool_for_model(self, model: str) -> Pool | None:
        return self._by_model.get(model)

    def apply(self, event: ReplicaEvent) -> None:
        """Apply one discovery event. Events for unknown pools are ignored."""
        pool = self.pools.get(event.pool)
        if pool is None:
            return
        if isinstance(event, ReplicaUpsert):
            known = event.address in pool.replicas
            pool.upsert(event.address, event.slots, event.phase)
            if not known:
                self.inflight.added(event.address)
        elif isinstance(event, ReplicaRemoved):
            pool.remove(event.address)
        elif isinstance(event, ReplicaExternalLoad):
            # Envoys' own count guards the scrape's reclaiming (``Pool.set_external``).
            counted = self.inflight.in_progress(event.address) if self.inflight.reporting else 0
            pool.set_external(
                event.address, event.running, reconcile=event.reconcile, counted=counted
            )
            if event.reconcile:  # the replica's own report: the fence is no longer needed
                self.inflight.scraped(event.address)

    # -- narrow reads for adapters (they never walk pools' internals) ----------------------

    def pool_names(self) -> list[str]:
        """The configured pools, in config order (retired ones are not listed)."""
        return list(self.pools)

    def replica(self, pool: str, address: str) -> Replica | None:
        """Pool ``pool``'s replica at ``address``, or None. Read only: the pool owns it."""
        p = self.pools.get(pool)
        return None if p is None else p.replicas.get(address)

    def addresses(self, pool: str, *, live_only: bool = True) -> list[str]:
        """A configured pool's replica addresses (empty if unknown); ``live_only`` skips
        GONE replicas, which linger only until their leases end."""
        p = self.pools.get(pool)
        return [] if p is None else p.addresses(live_only=live_only)

    def load(self, pool: str) -> PoolLoad | None:
        """A configured pool's demand and per-replica load, or None if unknown. Costs one
        pass over that pool's replicas, not a full ``view()``."""
        p = self.pools.get(pool)
        return None if p is None else p.load()

    def leases_on(self, address: str) -> list[Lease]:
        """The active leases on ``address``, every pool's, retired ones included (from the
        per-replica index: costs the address's leases, not the registry's)."""
        capacity = self._capacities.get(address)
        return [] if capacity is None else capacity.leases()

    def lease(self, lease_id: str) -> Lease | None:
        return self.leases.get(lease_id)

    def lease_for_request(self, request_id: str) -> Lease | None:
        """The active lease granted to Envoy's request ``request_id`` (ids Envoy made)."""
        return self._by_request.get(request_id) if request_id else None

    # -- outlier detection (``warmroute.state.outlier``) ------------------------------------

    def report(self, lease: Lease, outcome: Outcome) -> Ejection | Backoff | None:
        """How ``lease``'s request ended, for its replica; call before releasing the lease
        (``Pool.report``). Returns the ejection or back-off it caused, else None."""
        return lease.pool.report(lease, outcome)

    def next_outlier_due(self) -> float | None:
        """When the next ejection or back-off ends, in any pool (None: none held). Call
        ``restore_outliers`` then."""
        due: float | None = None
        for pool in [*self.pools.values(), *self._retired]:
            when = pool.outliers.next_due()
            if when is not None and (due is None or when < due):
                due = when
        return due

    def restore_outliers(self) -> list[Return]:
        """End every ejection and back-off that is due and dispatch the replicas they
        free (``Pool.restore_outliers``). Returns the ejections ended."""
        returns: list[Return] = []
        for pool in [*self.pools.values(), *self._retired]:
            if pool.outliers.held:
                returns += pool.restore_outliers()
        return returns

    def expire(self) -> list[Lease]:
        """Reclaim every lease past its deadline and time out overdue waiters."""
        now = self._clock()
        # Waiters first: a slot freed by an expired lease must not go to an overdue waiter.
        for pool in [*self.pools.values(), *self._retired]:
            pool.expire_waiters(now)
        overdue = [lease for lease in self.leases.values() if lease.deadline <= now]
        for lease in overdue:
            lease.release(EndReason.EXPIRED)
        retired = []
        for pool in self._retired:
            if pool.idle:
                pool.detach()  # its replicas stop bounding their addresses' slots
            else:
                retired.append(pool)
        self._retired = retired
        return overdue

    def view(self) -> RegistryView:
        """An immutable snapshot for status pages and metrics."""
        book = self.inflight
        pools = []
        for pool in self.pools.values():
            outliers = pool.outliers
            replicas = tuple(
                ReplicaView(
                    r.address,
                    r.phase.value,
                    r.slots,
                    r.in_flight,
                    r.external,
                    r.leased_total,
                    r.free,
                    r.busy,
                    r.capacity.tokens,
                    _reserved(r),
                    r.capacity.tokens_leased,
                    r.scraped,
                    r.unleased,
                    book.in_progress(r.address),
                    book.held(r.address),
                    outliers.status(r.address),
                )
                for r in sorted(pool.replicas.values(), key=lambda r: r.address)
            )
            c = pool.counters
            pools.append(
                PoolView(
                    name=pool.name,
                    models=pool.spec.models,
                    replicas=replicas,
                    waiting=len(pool.queue),
                    max_waiting=pool.spec.max_waiting,
                    granted_immediately=c.granted_immediately,
                    granted_after_wait=c.granted_after_wait,
                    expired=c.expired,
                    reconciled=c.reconciled,
                    rejected_queue_full=c.rejected_queue_full,
                    waits_timed_out=c.waits_timed_out,
                    waits_cancelled=c.waits_cancelled,
                    forecast=pool.forecast.view(),
                    outlier_detection=outliers.spec.enabled,
                    ejections=outliers.ejections,
                    ejections_capped=outliers.capped,
                    backoffs=outliers.backoffs,
                )
            )
        return RegistryView(pools=tuple(pools), leases=len(self.leases), fence=book.view())
