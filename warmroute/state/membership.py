"""A pool's replicas coming and going, what they report, and what adapters read of them.

``Membership`` is the part of ``Pool`` (``warmroute.state.pool``) that applies discovery's
typed events (``warmroute.state.events``: a replica upserted, removed, its reported load),
the in-flight book's figures (``warmroute.state.inflight``), outlier detection's verdicts
(``warmroute.state.outlier``), and answers the narrow reads adapters make. Every change
that may free a slot dispatches the pool's waiters, and those of every other pool that
lists the address (slots are per address, ``warmroute.state.replica``).

A mixin only to keep ``Pool`` one class with one API while each file holds one idea; it
reads and writes only the attributes declared below, which ``Pool`` owns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmroute.state.forecast import Forecast, Supply, wait_on_slots
from warmroute.state.lease import Lease
from warmroute.state.ledger import Clock, Ledger
from warmroute.state.outlier import Backoff, Ejection, Outcome, OutlierDetector, Return
from warmroute.state.replica import Capacity, Phase, Replica
from warmroute.state.snapshot import PoolLoad, ReplicaLoad
from warmroute.state.waiters import WaitQueue

if TYPE_CHECKING:
    from warmroute.state.pool import Pool

_WARM = Phase.WARM
_MAY_SERVE = frozenset((Phase.WARM, Phase.LOADING))


class Membership:
    """Replica membership, reported load, outliers and reads of a ``Pool`` (module doc)."""

    # Owned by ``Pool``; declared for the type checker.
    replicas: dict[str, Replica]
    queue: WaitQueue
    ledger: Ledger
    forecast: Forecast
    outliers: OutlierDetector
    _capacities: dict[str, Capacity]
    _clock: Clock

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _dispatch_others(self, members: dict[Pool, Replica]) -> None:
        raise NotImplementedError

    def _me(self) -> Pool:
        return self  # type: ignore[return-value]  # only ever mixed into Pool

    # -- membership ----------------------------------------------------------------------

    def upsert(self, address: str, slots: int, phase: Phase) -> Replica:
        """Add or update this pool's replica at ``address``.

        A new replica joins the address's ``Capacity``: if another pool (a retired one, or
        the one it moved from) still has leases on it, they count against its slots here.
        """
        replica = self.replicas.get(address)
        self.forecast.cold.transition(
            address, None if replica is None else replica.phase, phase, self._clock()
        )
        if replica is None:
            capacity = self._capacities.get(address)
            if capacity is None:
                capacity = self._capacities[address] = Capacity(address, slots)
            replica = Replica(address, slots, phase, capacity)
            self.replicas[address] = replica
            capacity.members[self._me()] = replica
        else:
            replica.slots = slots
            replica.phase = phase
        capacity = replica.capacity
        capacity.refresh()
        if phase is Phase.WARM:
            self._dispatch()
        if len(capacity.members) > 1:
            # The address's slots may have grown for the other pools that list it.
            self._dispatch_others(capacity.members)
        return replica

    def remove(self, address: str) -> None:
        """The replica is gone: no new lease; forgotten once its last lease ends."""
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.phase = Phase.GONE
        self.outliers.forget(address)
        replica.held = False
        if replica.in_flight == 0:
            self._forget(replica)
        else:
            replica.capacity.refresh()
        # A GONE replica no longer bounds the address's slots in other pools.
        self._dispatch_others(replica.capacity.members)

    def set_external(
        self, address: str, running: int, *, reconcile: bool = False, counted: int = 0
    ) -> list[Lease]:
        """Record how many requests the replica reports running in total.

        Beyond our leases they count as busy slots. With ``reconcile``, leases the replica
        no longer has are reclaimed (``reclaim``), but never those Envoys still count in
        progress there (``counted``): a server's gauges can lag its requests by a whole
        engine step (seen on a real vLLM: 0 running for 8 s with 4 requests inside), and
        reclaiming then would hand the same slots out twice. Returns those leases.
        Touches only this replica's leases (its index), never the registry's.
        """
        replica = self.replicas.get(address)
        if replica is None:
            return []
        capacity = replica.capacity
        reclaimed: list[Lease] = []
        gone = capacity.leased - max(running, counted)
        if reconcile and gone > 0:
            reclaimed = self.ledger.reclaim(replica, gone)
        # ``running`` is the whole server's load: every pool's leases on it are ours.
        replica.scraped = max(0, running - capacity.leased)
        replica.external = max(replica.scraped, replica.unleased)
        self._dispatch()
        if reclaimed:
            self._dispatch_others(capacity.members)
        return reclaimed

    def reclaim(self, address: str, count: int) -> list[Lease]:
        """End up to ``count`` of this pool's leases on ``address`` as RECONCILED
        (``Ledger.reclaim``: the oldest past ``reconcile_after_seconds``). Only this
        pool's: another pool's leases on a shared address are its own. Returns them."""
        replica = self.replicas.get(address)
        if replica is None or count <= 0:
            return []
        reclaimed = self.ledger.reclaim(replica, count)
        if reclaimed:
            self._dispatch()
            self._dispatch_others(replica.capacity.members)
        return reclaimed

    def set_unleased(self, address: str, unleased: int) -> None:
        """Slots busy on ``address`` with requests no pool leased (``state.inflight``)."""
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.unleased = unleased
        replica.external = max(replica.scraped, unleased)
        self._dispatch()

    def _forget(self, replica: Replica) -> None:
        if self.replicas.get(replica.address) is not replica:
            return
        del self.replicas[replica.address]
        capacity = replica.capacity
        me = self._me()
        if capacity.members.get(me) is replica:
            del capacity.members[me]
        if capacity.members:
            capacity.refresh()
        elif capacity.leased == 0 and self._capacities.get(replica.address) is capacity:
            del self._capacities[replica.address]

    def detach(self) -> None:
        """Forget every replica of an idle pool (a retired pool the registry drops).

        Its replicas stop bounding their addresses' slots, so the other pools that list
        them are dispatched. Does nothing to a pool with leases or waiters.
        """
        if not self.idle:
            return
        for replica in list(self.replicas.values()):
            self._forget(replica)
            self._dispatch_others(replica.capacity.members)

    @property
    def idle(self) -> bool:
        """No waiter and no lease: nothing would be lost by forgetting this pool."""
        return not self.queue and not any(r.in_flight for r in self.replicas.values())

    def can_ever_serve(self, eligible: frozenset[str] | None) -> bool:
        """False if no replica in ``eligible`` could ever take the request.

        None (no subset) is always True: the pool may still scale up from nothing. With a
        subset, True if at least one of its addresses is a replica of this pool that is
        WARM or LOADING, busy or not; False if none is known here (the empty set included),
        or all of them are DRAINING or GONE. Addresses the pool does not know count for
        nothing: replicas come from discovery, not from the gateway's hint.
        """
        if eligible is None:
            return True
        replicas = self.replicas
        if len(eligible) <= len(replicas):
            candidates = [replicas[a] for a in eligible if a in replicas]
        else:
            candidates = [r for r in replicas.values() if r.address in eligible]
        return any(r.phase in _MAY_SERVE for r in candidates)

    # -- outliers (``warmroute.state.outlier``) --------------------------------------------

    def report(self, lease: Lease, outcome: Outcome) -> Ejection | Backoff | None:
        """Count how ``lease``'s request ended for its replica, *before* releasing the
        lease: the slot it frees must not go to a replica this ejects or backs off.

        Returns the ejection or back-off it caused (then call ``next_outlier_due`` and
        ``restore_outliers`` when due), else None. Nothing for another pool's lease or a
        replica that left the pool.
        """
        replica = lease.replica
        if lease.pool is not self or replica.phase is Phase.GONE:
            return None
        event = self.outliers.report(replica.address, outcome)
        if event is not None:
            replica.held = True
        return event

    def restore_outliers(self) -> list[Return]:
        """End the ejections and back-offs that are due (``OutlierDetector.restore``)
        and hand the replicas they free to waiting requests. Returns the ejections ended."""
        returns, freed = self.outliers.restore()
        for address in freed:
            replica = self.replicas.get(address)
            if replica is not None:
                replica.held = False
        if freed:
            self._dispatch()
        return returns

    def _warm_addresses(self) -> list[str]:
        return [a for a, r in self.replicas.items() if r.phase is _WARM]

    # -- reads for adapters ----------------------------------------------------------------

    def addresses(self, *, live_only: bool = True) -> list[str]:
        """This pool's replica addresses, in the pool's order; ``live_only`` skips GONE
        replicas (removed, lingering only until their leases end)."""
        if not live_only:
            return list(self.replicas)
        return [a for a, r in self.replicas.items() if r.phase is not Phase.GONE]

    def load(self) -> PoolLoad:
        """Waiting requests and every replica's phase, slots and load, as values."""
        return PoolLoad(
            waiting=len(self.queue),
            replicas=tuple(
                ReplicaLoad(r.address, r.phase, r.slots, r.in_flight, r.busy)
                for r in self.replicas.values()
            ),
        )

    def supply(self, cold_prior: float, *, asked_slots: int = 0) -> Supply:
        """This pool's slots as ``forecast.decide`` sees them now (``Forecast.supply``)."""
        return self.forecast.supply(
            self.replicas.values(), len(self.queue), self._clock(), cold_prior, asked_slots
        )

    def predicted_wait(self, cold_prior: float, position: int | None = None) -> float | None:
        """Seconds a request at ``position`` (default: one arriving now, behind the whole
        queue) is predicted to wait for a slot there is or is coming; ``inf`` with none;
        None before any request finished (no service time learned: no prediction)."""
        supply = self.supply(cold_prior)
        if supply.service is None:
            return None
        at = len(self.queue) + 1 if position is None else position
        return wait_on_slots(supply.slot_free_in, at, supply.service)

    def active_leases(self) -> list[Lease]:
        """This pool's active leases (from its replicas' indexes: a replica with a lease
        in flight is never forgotten)."""
        return [lease for r in self.replicas.values() for lease in r.leases.values()]
