"""A pool: the replicas serving one set of models, their leases and their wait queue.

One input, one decision: a request's ``Ask`` (``warmroute.state.ask``: eligible set, token
cost, affinity hint, band and fairness key, each optional) goes into ``try_acquire``
(a lease now, or None: wait) and, if it must wait, ``enqueue`` (a ``Waiter`` granted by
dispatch when a slot frees). Around that, in their own modules:

* the free test and the pick: ``candidates`` (free, warm, eligible, not held, tokens
  fit) then ``picker`` (the pool's weighted scorers, ``scorers``);
* the queue's order: ``waiters`` (bands, fairness lanes, eligible sets);
* dispatch: ``dispatch`` (by slots, or head of line by slots and tokens);
* the books: ``ledger`` (grant, end, undo, refund, reclaim; counters);
* slots shared per address across pools: ``replica`` (``Capacity``); what runs beyond
  our leases: ``inflight`` and ``set_external``; outliers held out: ``outlier``.

Subsets (EPP mode): a request whose ``Ask`` names an eligible set is leased and
dispatched only inside it. Waiters are served in the queue's order among those that can
use a free replica; one whose set holds no free replica is skipped, so a slot it cannot
use goes to the next that can. Greedy, not a maximum matching.

Priority: a full queue makes room for a higher band by displacing the newest waiter of
the lowest band below it. Without bands it is one FIFO.

Capacity is per address, not per pool: a replica moved from pool A to pool B while A's
requests still run on it is full in B until they end, and when a lease on it ends in any
pool, the waiters of every pool that lists it are dispatched too: the releasing pool's
first, then the others in the order they came to know the address.

Invariants (checked by tests/unit/test_state_properties.py after every step):
  * for every replica, ``in_flight`` equals its pool's active leases on it; for every
    address, ``capacity.leased`` equals the active leases on it across all pools, and at
    the moment a lease is granted it does not exceed ``capacity.slots``, external load
    included;
  * each lease is released exactly once; a waiter leaves WAITING exactly once, and a
    cancelled or timed-out waiter never holds a lease;
  * a lease is only ever granted on a replica in its request's eligible set;
  * work conservation: while a waiter is queued, no WARM replica of its pool in its
    eligible set has a free slot (address-wide); in a token pool, unless an earlier
    waiter may use that replica (tests/unit/test_state_tokens.py);
  * FIFO per replica: a slot goes to the first queued waiter (in the queue's order) that
    may use it, and a new request never takes a slot a queued waiter may use
    (tests/unit/test_state_priority.py for bands and lanes).

A replica outlier detection holds (``Replica.held``) is not free; its return is a slot
freeing like any other. A waiter whose eligible replicas all disappear waits for one to
come back or times out; new requests are turned away up front by ``can_ever_serve``.
"""

from __future__ import annotations

from collections.abc import Callable

from warmroute.errors import QueueFull
from warmroute.state.affinity import AffinityMemory, AffinitySpec
from warmroute.state.ask import Ask
from warmroute.state.dispatch import SlotDispatch, TokenDispatch
from warmroute.state.forecast import Forecast
from warmroute.state.lease import EndReason, Lease
from warmroute.state.ledger import Clock, IdFactory, Ledger
from warmroute.state.membership import Membership
from warmroute.state.outlier import OutlierDetector
from warmroute.state.picker import Picker
from warmroute.state.priority import PrioritySpec
from warmroute.state.replica import Capacity, Replica
from warmroute.state.spec import PoolSpec
from warmroute.state.tokens import check_tokens
from warmroute.state.waiters import (
    GrantCallback,
    Waiter,
    WaitQueue,
    WaitState,
    new_queue,
    requeue,
)

__all__ = ["Clock", "IdFactory", "Pool", "PoolSpec"]


class Pool(Membership):
    """Replicas, leases and waiters of one pool. Synchronous; not thread-safe.

    ``leases`` is the registry-wide index (lease id -> lease) shared by all pools, so the
    end-of-request path finds a lease in one dict lookup. ``capacities`` is the
    registry-wide address -> ``Capacity`` map, so pools that list one address share its
    slots (a lone pool keeps its own). Membership, outliers and reads for adapters are in
    ``warmroute.state.membership``.
    """

    def __init__(
        self,
        spec: PoolSpec,
        *,
        clock: Clock,
        new_id: IdFactory,
        leases: dict[str, Lease],
        by_request: dict[str, Lease] | None = None,
        capacities: dict[str, Capacity] | None = None,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._capacities: dict[str, Capacity] = {} if capacities is None else capacities
        self.replicas: dict[str, Replica] = {}
        self.queue = new_queue(spec.priority)
        self._queue_priority = spec.priority  # the bands ``queue`` was built for
        self.ledger = Ledger(
            self,
            clock=clock,
            new_id=new_id,
            leases=leases,
            by_request={} if by_request is None else by_request,
            forget=self._forget,
        )
        self.counters = self.ledger.counters
        self.picker = Picker.for_policy(spec.policy, self)
        self._dispatcher = TokenDispatch(self) if spec.tokens else SlotDispatch(self)
        self._dispatching = False
        # Who served which prompt prefix or session (pools with an AffinitySpec; lazily).
        self.affinity: AffinityMemory | None = None
        # Learned service and cold-start times (fed by the ledger and upsert).
        self.forecast = Forecast()
        # Replicas held out of leasing (ejected, backed off): ``warmroute.state.outlier``.
        self.outliers = OutlierDetector(spec.name, spec.outlier, self._warm_addresses, clock)
        self._held = self.outliers.held  # the same set: empty while no replica is held

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def affinity_spec(self) -> AffinitySpec | None:
        return self.spec.affinity

    # -- leasing -------------------------------------------------------------------------

    def try_acquire(self, ask: Ask) -> Lease | None:
        """A lease on the best free replica for ``ask`` now, or None if it must wait.

        Never overtakes a queued waiter: with only unrestricted waiters queued it returns
        None at once; otherwise any free replica is one no queued waiter may use (work
        conservation), so taking it overtakes nobody. In a pool with a token budget it
        returns None whenever anyone waits (a waiter may hold a replica until its tokens
        free, and only dispatch knows which: ``enqueue`` then serves it at once if it
        may), and raises RequestTooLarge if ``ask.tokens`` is over a replica's whole
        budget. A granted ``ask.affinity`` is remembered for the replica.
        """
        queue = self.queue
        budget = self.spec.tokens
        if budget is None:
            if queue.unrestricted and not queue.restricted:
                return None
            tokens = None
        else:
            tokens = 0 if ask.tokens is None else ask.tokens
            check_tokens(budget, tokens, self.name)
            if queue:
                return None
        replica = self.picker.choose(self.replicas.values(), ask, tokens, self._held)
        if replica is None:
            return None
        self.counters.granted_immediately += 1
        lease = self.ledger.grant(replica, ask.request_id, tokens or 0)
        if ask.affinity is not None:
            self.remember(ask, replica)
        return lease

    def enqueue(
        self,
        ask: Ask,
        on_grant: GrantCallback,
        *,
        timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        on_displaced: Callable[[], None] | None = None,
    ) -> Waiter:
        """Queue ``ask`` for the next free slot it may use (its eligible set, its tokens).

        ``on_grant`` is called synchronously from whichever call frees a slot; it must not
        call back into the pool, and returns False to refuse (its requester is gone). The
        wait lasts ``timeout`` (default: the pool's, or its band's, queue timeout).

        Raises QueueFull when ``max_waiting`` are queued whatever their sets; in a pool
        with bands, when the ask's band is at its bound, or the pool is and no lower band
        has a waiter (otherwise the newest waiter of the lowest band below is displaced:
        its ``on_displaced`` is called, synchronously). Raises RequestTooLarge if its
        tokens could never fit. The waiter stays queued even if nothing in its set can
        serve it (check ``can_ever_serve`` first); it then times out like any other. It
        may come back granted already (``waiter.lease``).
        """
        tokens = None
        if self.spec.tokens is not None:
            tokens = 0 if ask.tokens is None else ask.tokens
            check_tokens(self.spec.tokens, tokens, self.name)
        priority = self.spec.priority
        queue = self.queue
        wait = self.spec.queue_timeout
        lane: tuple[int, str] | None = None
        if priority is None:
            if len(queue) >= self.spec.max_waiting:
                self.counters.rejected_queue_full += 1
                raise QueueFull(f"pool {self.name!r} has {len(queue)} requests waiting")
        else:
            queue = self._ranked_queue(priority)
            index = priority.index(ask.band)
            band = priority.bands[index]
            if queue.band_len(index) >= band.max_waiting:
                self.counters.rejected_queue_full += 1
                raise QueueFull(
                    f"pool {self.name!r} has {queue.band_len(index)} {band.name!r} requests waiting"
                )
            if len(queue) >= self.spec.max_waiting:
                victim = queue.newest_below(index)
                if victim is None:
                    self.counters.rejected_queue_full += 1
                    raise QueueFull(f"pool {self.name!r} has {len(queue)} requests waiting")
                self._displace(victim)
            wait = band.queue_timeout
            lane = None if index == priority.default and not ask.key else (index, ask.key)
        now = self._clock()
        deadline = now + (wait if timeout is None else timeout)
        waiter = Waiter(
            ask.request_id, now, deadline, on_grant, on_timeout, ask.eligible, lane,
            on_displaced, tokens, ask,
        )  # fmt: skip
        queue.push(waiter)
        # A slot may be free with waiters queued only if try_acquire was skipped.
        self._dispatch()
        return waiter

    def _displace(self, victim: Waiter) -> None:
        """Turn a waiter away to make room for a higher band's request."""
        self.queue.remove(victim)
        victim.state = WaitState.DISPLACED
        self.counters.displaced += 1
        if victim.on_displaced is not None:
            victim.on_displaced()

    def _ranked_queue(self, priority: PrioritySpec) -> WaitQueue:
        """The queue, rebuilt first if the pool's bands changed since it was built
        (``waiters.requeue``: each waiter keeps its order and moves to its band's name)."""
        self.queue = requeue(self.queue, self._queue_priority, priority)
        self._queue_priority = priority
        return self.queue

    def remember(self, ask: Ask, replica: Replica) -> None:
        """``replica`` was granted ``ask``: remember its affinity hint (pools with an
        AffinitySpec; nothing otherwise)."""
        spec = self.spec.affinity
        if spec is None or ask.affinity is None:
            return
        memory = self.affinity
        if memory is None:
            memory = self.affinity = AffinityMemory(spec.memory)
        elif memory.capacity != spec.memory:
            memory.capacity = spec.memory  # a reload resized it: shrinks on this grant
        memory.remember(ask.affinity, replica.address)

    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a waiter. False if it already left the queue (granted or timed out)."""
        if waiter.state is not WaitState.WAITING or not self.queue.remove(waiter):
            return False
        waiter.state = WaitState.CANCELLED
        self.counters.waits_cancelled += 1
        self._unblocked()
        return True

    def _unblocked(self) -> None:
        """A waiter left the queue. In a token pool the head of the line holds back the
        waiters behind it (``warmroute.state.dispatch``): with it gone, one may fit now."""
        if self.spec.tokens is not None:
            self._dispatch()

    def expire_waiters(self, now: float) -> list[Waiter]:
        """Time out waiters past their deadline (a backstop for the adapter's own timer)."""
        timed_out = [w for w in self.queue if w.deadline <= now]
        for w in timed_out:
            self.queue.remove(w)
            w.state = WaitState.TIMED_OUT
            self.counters.waits_timed_out += 1
        if timed_out:
            self._unblocked()
        for w in timed_out:
            if w.on_timeout is not None:
                w.on_timeout()
        return timed_out

    def mark_timed_out(self, waiter: Waiter) -> bool:
        """The adapter's precise timer fired for this waiter. False if it already left."""
        if waiter.state is not WaitState.WAITING or not self.queue.remove(waiter):
            return False
        waiter.state = WaitState.TIMED_OUT
        self.counters.waits_timed_out += 1
        self._unblocked()
        return True

    def release(self, lease: Lease, reason: EndReason = EndReason.FINISHED) -> bool:
        """End a lease (idempotent) and hand its slot to the next waiter.

        The releasing pool's waiters come first; if the address is shared, the other
        pools that list it are then dispatched too.
        """
        if lease.ended is not None or lease.pool is not self:
            return False
        self.ledger.end(lease, reason)
        self._dispatch()
        members = lease.replica.capacity.members
        if len(members) > 1 or self not in members:
            self._dispatch_others(members)
        return True

    def _dispatch(self) -> None:
        """Serve waiters from free slots (``warmroute.state.dispatch``); nothing if none
        waits. Not re-entrant: a grant callback that frees a slot is served by the loop
        already running."""
        queue = self.queue
        if (queue.unrestricted or queue.restricted) and not self._dispatching:
            self._dispatching = True
            try:
                self._dispatcher.run()
            finally:
                self._dispatching = False

    def _dispatch_others(self, members: dict[Pool, Replica]) -> None:
        """Dispatch every other pool that lists an address whose slots may have freed."""
        for pool in list(members):
            if pool is not self and pool.queue:
                pool._dispatch()

    def set_spec(self, spec: PoolSpec) -> None:
        """Take a reloaded spec. A new policy takes effect on the next pick. If the token
        budget changed, the budgets of the pool's addresses are recomputed and waiters
        dispatched (here and in the pools sharing them): a larger budget may fit a waiter
        now, and a pool that lost its budget serves its waiters by slots alone."""
        old = self.spec
        self.spec = spec
        if spec.policy != old.policy:
            self.picker = Picker.for_policy(spec.policy, self)
        if spec.outlier != self.outliers.spec:
            self.outliers.configure(spec.outlier)  # a detection turned off: due at once
        if spec.tokens == old.tokens:
            return
        self._dispatcher = TokenDispatch(self) if spec.tokens else SlotDispatch(self)
        for replica in list(self.replicas.values()):
            replica.capacity.refresh()
        self._dispatch()
        for replica in list(self.replicas.values()):
            self._dispatch_others(replica.capacity.members)
