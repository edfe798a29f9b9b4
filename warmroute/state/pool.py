"""A pool: the replicas serving one set of models, their leases and their wait queue.

Subsets (EPP mode): a request may name an *eligible set*, the ``ip:port`` addresses of the
replicas it may use (the gateway's subset hint); ``None`` means any replica. Leasing and
dispatch pick only inside it. Waiters are served oldest first among those that can use a
free replica; a waiter whose set holds no free replica is skipped, so a slot it cannot use
goes to the next waiter that can. The choice is greedy, not a maximum matching: with
several replicas free at once, the oldest servable waiter takes the policy's pick within
its set, even if that is the only one a younger waiter could have used.

Priority (``PoolSpec.priority``): waiters are ordered by band first, then by turns among
their band's fairness keys, then by age (``warmroute.state.waiters``); "oldest" below means
"first in that order". A full queue makes room for a higher band by displacing the newest
waiter of the lowest band below it. Without bands it is one FIFO, as above.

Capacity is per address, not per pool (see ``warmroute.state.replica``): every pool's
replica for one address shares a ``Capacity`` that counts the leases on it across all
pools, retired pools included. So a replica moved from pool A to pool B while A's
requests still run on it is full in B until they end, and when a lease on it ends in any
pool, the waiters of every pool that lists it are dispatched too: the releasing pool's
first, then the others in the order they came to know the address. There is no FIFO
across pools, only within one.

Invariants (checked by tests/unit/test_state_properties.py after every step):
  * for every replica, ``in_flight`` equals its pool's active leases on it; for every
    address, ``capacity.leased`` equals the active leases on it across all pools, and at
    the moment a lease is granted it does not exceed ``capacity.slots`` (the smallest
    slots any pool not done with it reports), external load included;
  * each lease is released exactly once;
  * a waiter leaves WAITING exactly once, and a cancelled or timed-out waiter never
    holds a lease;
  * a lease is only ever granted on a replica in its request's eligible set;
  * work conservation, generalised: while a waiter is queued, no WARM replica of its pool
    *in its eligible set* (any replica, if it has none) has a free slot, free counted
    address-wide: a slot freed by another pool's lease is dispatched like one's own. With
    no subsets and one pool this is the plain rule: no WARM replica has a free slot while
    anyone waits;
  * FIFO per replica: a slot goes to the oldest queued waiter that may use its replica,
    and a new request never takes a slot a queued waiter may use. With bands (checked by
    tests/unit/test_state_priority.py): never to a lower band while a higher band's waiter
    may use it, and no fairness lane is served twice while another lane of its band waits
    with a waiter any replica may serve.

Tokens (``PoolSpec.tokens``, ``warmroute.state.tokens``): a lease also reserves its
request's tokens on the address, refunded exactly once when it ends, and a replica is free
for a request only with a free slot and enough free tokens. Such a pool dispatches head
of line (``_dispatch_tokens``): a waiter that fits none of its free replicas holds them,
so work conservation there reads "no waiter waits while a free replica it may use fits
it, unless an earlier waiter may use that replica" (tests/unit/test_state_tokens.py).

A waiter whose eligible replicas all disappear (removed, draining) while it waits is not
failed early: it waits for one to come back and otherwise times out after its queue timeout
like any other waiter. New requests are turned away up front by ``can_ever_serve``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from warmroute.errors import QueueFull, RequestTooLarge
from warmroute.state.affinity import Affinity, AffinityMemory, AffinitySpec
from warmroute.state.forecast import Forecast, Supply, wait_on_slots
from warmroute.state.lease import EndReason, Lease
from warmroute.state.policy import Policy, least_loaded, prefix_affinity
from warmroute.state.priority import PrioritySpec
from warmroute.state.replica import Capacity, Phase, Replica
from warmroute.state.snapshot import PoolLoad, ReplicaLoad
from warmroute.state.tokens import TokenRankedWaiter, TokenSpec, TokenWaiter, cost_of
from warmroute.state.waiters import GrantCallback, RankedWaiter, Waiter, WaitQueue, WaitState

_WARM = Phase.WARM
_MAY_SERVE = frozenset((Phase.WARM, Phase.LOADING))

Clock = Callable[[], float]
IdFactory = Callable[[], str]


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
    policy: str = "least_loaded"
    # Bands and fairness (None: one FIFO, as always). ``max_waiting`` still bounds the
    # whole queue; each band also has its own bound and queue timeout.
    priority: PrioritySpec | None = None
    # Set with policy prefix_affinity: hints steer the immediate pick (``try_acquire``).
    affinity: AffinitySpec | None = None


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


class Pool:
    """Replicas, leases and waiters of one pool. Synchronous; not thread-safe.

    ``leases`` is the registry-wide index (lease id -> lease) shared by all pools, so the
    end-of-request path finds a lease in one dict lookup. ``capacities`` is the
    registry-wide address -> ``Capacity`` map, so pools that list one address share its
    slots (a lone pool keeps its own).
    """

    def __init__(
        self,
        spec: PoolSpec,
        *,
        clock: Clock,
        new_id: IdFactory,
        leases: dict[str, Lease],
        by_request: dict[str, Lease] | None = None,
        policy: Policy = least_loaded,
        capacities: dict[str, Capacity] | None = None,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._new_id = new_id
        self._leases = leases
        self._by_request = by_request if by_request is not None else {}
        self._policy = policy
        self._capacities: dict[str, Capacity] = {} if capacities is None else capacities
        self.replicas: dict[str, Replica] = {}
        self.queue = _new_queue(spec.priority)
        self._queue_priority = spec.priority  # the bands ``queue`` was built for
        self.counters = PoolCounters()
        self._dispatching = False
        if spec.tokens is not None:
            self._bind_dispatch()
        # Who served which prompt prefix or session (pools with an AffinitySpec; lazily).
        self.affinity: AffinityMemory | None = None
        # Learned service and cold-start times (fed by _end and upsert), last decision.
        self.forecast = Forecast()

    @property
    def name(self) -> str:
        return self.spec.name

    # -- leasing -------------------------------------------------------------------------

    def try_acquire(
        self,
        request_id: str,
        eligible: frozenset[str] | None = None,
        affinity: Affinity | None = None,
    ) -> Lease | None:
        """A lease on a free warm replica now, or None if the caller must wait.

        ``eligible`` limits the pick to replicas with those addresses (None: any). Never
        overtakes a queued waiter: with only unrestricted waiters queued it returns None at
        once; otherwise any free replica is one no queued waiter may use (work conservation),
        so taking it overtakes nobody.

        ``affinity`` (used only if the pool has an ``AffinitySpec``) steers the pick among
        the free replicas (``policy.prefix_affinity``) and is remembered for the replica
        granted. A request that has to wait gets the slot that frees next, as any waiter
        (call ``remember_affinity`` with its lease).
        """
        queue = self.queue
        if queue.unrestricted and not queue.restricted:
            return None
        if affinity is not None and self.spec.affinity is not None:
            return self._acquire_near(request_id, eligible, affinity, self.spec.affinity)
        if eligible is None:
            replica = self._policy(self.replicas.values())
        else:
            replica = self._policy(self._candidates(eligible))
        if replica is None:
            return None
        self.counters.granted_immediately += 1
        return self._grant(replica, request_id)

    def _acquire_near(
        self,
        request_id: str,
        eligible: frozenset[str] | None,
        affinity: Affinity,
        spec: AffinitySpec,
    ) -> Lease | None:
        """``try_acquire`` with a hint: a separate method so the plain path stays as cheap."""
        memory = self._affinity_memory(spec)
        candidates = self.replicas.values() if eligible is None else self._candidates(eligible)
        replica = prefix_affinity(candidates, memory.scores(affinity), spec.max_imbalance)
        if replica is None:
            return None
        self.counters.granted_immediately += 1
        lease = self._grant(replica, request_id)
        memory.remember(affinity, replica.address)
        return lease

    def remember_affinity(self, affinity: Affinity, lease: Lease) -> None:
        """Note that ``lease``'s replica served a request with ``affinity`` (a request that
        waited: ``try_acquire`` remembers its own grants). Nothing without an AffinitySpec."""
        spec = self.spec.affinity
        if spec is not None and lease.pool is self:
            self._affinity_memory(spec).remember(affinity, lease.replica.address)

    def _affinity_memory(self, spec: AffinitySpec) -> AffinityMemory:
        memory = self.affinity
        if memory is None:
            memory = self.affinity = AffinityMemory(spec.memory)
        elif memory.capacity != spec.memory:
            memory.capacity = spec.memory  # a reload resized it: shrinks on the next grant
        return memory

    def enqueue(
        self,
        request_id: str,
        on_grant: GrantCallback,
        *,
        timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
    ) -> Waiter:
        """Queue a request for the next free slot (of a replica in ``eligible``, if given).

        ``on_grant`` is called synchronously from whichever call frees a slot; it must not
        call back into the pool. Raises QueueFull when ``max_waiting`` are queued, whatever
        their eligible sets. The waiter stays queued even if nothing in ``eligible`` can
        serve it (check ``can_ever_serve`` first); it then times out like any other.

        In a pool with priority bands, the request waits in the default band (see
        ``enqueue_ranked``).
        """
        if self.spec.priority is not None:
            return self.enqueue_ranked(
                request_id, on_grant, timeout=timeout, on_timeout=on_timeout, eligible=eligible
            )
        if len(self.queue) >= self.spec.max_waiting:
            self.counters.rejected_queue_full += 1
            raise QueueFull(f"pool {self.name!r} has {len(self.queue)} requests waiting")
        now = self._clock()
        wait = self.spec.queue_timeout if timeout is None else timeout
        waiter = Waiter(request_id, now, now + wait, on_grant, on_timeout, eligible)
        self.queue.push(waiter)
        # A slot may be free with an empty queue only if try_acquire was skipped.
        self._dispatch()
        return waiter

    def enqueue_ranked(
        self,
        request_id: str,
        on_grant: GrantCallback,
        *,
        band: int | str | None = None,
        key: str = "",
        on_displaced: Callable[[], None] | None = None,
        timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
        tokens: int | None = None,
    ) -> Waiter:
        """``enqueue`` in a pool with priority bands: the request waits in ``band`` (index
        or name; None or an unknown name: the default band) and in ``key``'s lane of it,
        for at most the band's timeout.

        Raises QueueFull when its band is at its bound, or when the pool is and no lower
        band has a waiter; otherwise a full pool first displaces the newest waiter of the
        lowest band below, whose ``on_displaced`` is called (synchronously; it must not
        call back into the pool). In a pool without bands this is ``enqueue``: ``band``,
        ``key`` and ``on_displaced`` are ignored. A separate method so that ``enqueue``,
        the hot path, takes no more keyword arguments than it always did.

        ``tokens`` (pools with a token budget, with or without bands) is the request's
        cost (``TokenSpec.cost``): it waits until a replica has a slot and that many
        tokens free. Raises RequestTooLarge if no replica of the pool could ever hold it.
        """
        priority = self.spec.priority
        if tokens is not None:
            self._check_tokens(tokens)
            if priority is None:
                return self._enqueue_tokens(
                    request_id, on_grant, tokens, timeout, on_timeout, eligible
                )
        if priority is None:
            return self.enqueue(
                request_id, on_grant, timeout=timeout, on_timeout=on_timeout, eligible=eligible
            )
        queue = self._ranked_queue(priority)
        index = priority.index(band)
        spec = priority.bands[index]
        if queue.band_len(index) >= spec.max_waiting:
            self.counters.rejected_queue_full += 1
            raise QueueFull(
                f"pool {self.name!r} has {queue.band_len(index)} {spec.name!r} requests waiting"
            )
        if len(queue) >= self.spec.max_waiting:
            victim = queue.newest_below(index)
            if victim is None:
                self.counters.rejected_queue_full += 1
                raise QueueFull(f"pool {self.name!r} has {len(queue)} requests waiting")
            self._displace(victim)
        now = self._clock()
        wait = spec.queue_timeout if timeout is None else timeout
        lane = None if index == priority.default and not key else (index, key)
        if tokens is None:
            waiter = RankedWaiter(
                request_id, now, now + wait, on_grant, on_timeout, eligible, lane, on_displaced
            )
        else:
            waiter = TokenRankedWaiter(
                request_id, now, now + wait, on_grant, on_timeout, eligible, lane, on_displaced,
                tokens,
            )  # fmt: skip
        queue.push_ranked(waiter)
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
        """The queue, rebuilt first if the pool's bands changed since it was built.

        Waiters keep their arrival order and fairness key; each moves to the band of the
        same name, or to the default band if there is none any more (as does a waiter
        queued while the pool had no bands).
        """
        old = self._queue_priority
        if old is not None and old.names == priority.names and old.default == priority.default:
            return self.queue
        queue = _new_queue(priority)
        for w in list(self.queue):
            name = None
            if old is not None:
                name = old.bands[old.default if w.lane is None else w.lane[0]].name
            if isinstance(w, RankedWaiter):
                index = priority.index(name)
                key = "" if w.lane is None else w.lane[1]
                w.lane = None if index == priority.default and not key else (index, key)
            queue.push_ranked(w)
        self.queue, self._queue_priority = queue, priority
        return queue

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
            for address in eligible:
                r = replicas.get(address)
                if r is not None and r.phase in _MAY_SERVE:
                    return True
            return False
        return any(r.phase in _MAY_SERVE for r in self._candidates(eligible))

    def _candidates(self, eligible: frozenset[str]) -> list[Replica]:
        """The pool's replicas in ``eligible``, in the pool's order (so picks are stable)."""
        return [r for r in self.replicas.values() if r.address in eligible]

    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a waiter. False if it already left the queue (granted or timed out)."""
        if waiter.state is not WaitState.WAITING or not self.queue.remove(waiter):
            return False
        waiter.state = WaitState.CANCELLED
        self.counters.waits_cancelled += 1
        return True

    def release(self, lease: Lease, reason: EndReason = EndReason.FINISHED) -> bool:
        """End a lease (idempotent) and hand its slot to the next waiter.

        The releasing pool's waiters come first; if the address is shared, the other
        pools that list it are then dispatched too.
        """
        if lease.ended is not None or lease.pool is not self:
            return False
        self._end(lease, reason)
        self._dispatch()
        members = lease.replica.capacity.members
        if len(members) > 1 or self not in members:
            self._dispatch_others(members)
        return True

    def _dispatch_others(self, members: dict[Pool, Replica]) -> None:
        """Dispatch every other pool that lists an address whose slots may have freed."""
        for pool in list(members):
            if pool is not self and pool.queue:
                pool._dispatch()

    def _end(self, lease: Lease, reason: EndReason) -> None:
        lease.ended = reason
        self._leases.pop(lease.id, None)
        self._unindex(lease)
        replica = lease.replica
        del replica.leases[lease.id]
        replica.in_flight -= 1
        capacity = replica.capacity
        capacity.leased -= 1
        if capacity.reserved:
            self._refund(capacity, lease)
        replica.last_used = now = self._clock()
        if reason is EndReason.FINISHED:
            self.forecast.service.observe(now - lease.acquired_at)
        c = self.counters
        c.released += 1
        c.ended[reason.value] = c.ended.get(reason.value, 0) + 1
        if reason is EndReason.EXPIRED:
            c.expired += 1
        elif reason is EndReason.CANCELLED:
            c.cancelled_leases += 1
        if replica.phase is Phase.GONE and replica.in_flight == 0:
            self._forget(replica)

    def _unindex(self, lease: Lease) -> None:
        if self._by_request.get(lease.request_id) is lease:
            del self._by_request[lease.request_id]

    def _grant(self, replica: Replica, request_id: str) -> Lease:
        now = self._clock()
        lease = Lease(
            self._new_id(),
            request_id,
            self,
            replica,
            now,
            now + self.spec.max_request_seconds + self.spec.lease_grace_seconds,
        )
        replica.leases[lease.id] = lease
        replica.in_flight += 1
        replica.capacity.leased += 1
        replica.leased_total += 1
        replica.last_used = now
        self._leases[lease.id] = lease
        if request_id:
            self._by_request[request_id] = lease
        return lease

    def _dispatch(self) -> None:
        """Give free slots to waiters, oldest first, until one side runs out.

        With only the default lane's unrestricted waiters queued: the queue head takes the
        policy's pick, as always. Otherwise each round serves the waiter the queue selects
        for the free replicas: highest band, then the lane whose turn it is, then its
        oldest waiter that a free replica may serve.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self.queue
            unrestricted = queue.unrestricted
            while True:
                if queue.restricted:
                    pick = self._next_for_subsets()
                    if pick is None:
                        return
                    waiter, replica = pick
                    queue.take(waiter)
                elif unrestricted:
                    found = self._policy(self.replicas.values())
                    if found is None:
                        return
                    replica = found
                    waiter = unrestricted.popitem(last=False)[0]
                else:
                    return
                # What ``_offer`` does, inlined: this loop is the request hot path, where a
                # method call per grant is a measurable share of the work.
                last_used = replica.last_used
                lease = self._grant(replica, waiter.request_id)
                try:
                    accepted = waiter.on_grant(lease)
                except Exception:  # a broken callback refuses; it must not leak the slot
                    accepted = False
                if accepted:
                    waiter.state = WaitState.GRANTED
                    waiter.lease = lease
                    self.counters.granted_after_wait += 1
                else:
                    # Its requester is gone: undo as if never granted.
                    waiter.state = WaitState.CANCELLED
                    self.counters.waits_cancelled += 1
                    self._undo(lease)
                    replica.last_used = last_used
        finally:
            self._dispatching = False

    def _next_for_subsets(self) -> tuple[Waiter, Replica] | None:
        """The next waiter a free replica may serve (``WaitQueue.select``), and the
        policy's replica for it.

        Costs one pass over the replicas plus, per distinct eligible set queued, a lookup
        of each free address in it: waiters that share a set are never scanned one by one.
        """
        free = [
            r
            for r in self.replicas.values()
            if r.phase is _WARM and r.capacity.leased + r.external < r.capacity.slots
        ]
        if not free:
            return None
        best = self.queue.select([r.address for r in free])
        if best is None:
            return None
        eligible = best.eligible
        # The policy sees only the free candidates, in the pool's order: it picks only a
        # free replica anyway, so its choice is the one it would make among all of them.
        replica = self._policy(
            free if eligible is None else [r for r in free if r.address in eligible]
        )
        return None if replica is None else (best, replica)

    def _undo(self, lease: Lease) -> None:
        lease.ended = EndReason.CANCELLED
        self._leases.pop(lease.id, None)
        self._unindex(lease)
        replica = lease.replica
        del replica.leases[lease.id]
        replica.in_flight -= 1
        capacity = replica.capacity
        capacity.leased -= 1
        if capacity.reserved:
            self._refund(capacity, lease)
        replica.leased_total -= 1

    # -- tokens (pools with a TokenSpec; see warmroute.state.tokens) ------------------------

    def _bind_dispatch(self) -> None:
        """A pool with a token budget dispatches with ``_dispatch_tokens``. Bound on the
        instance rather than tested in ``_dispatch``, so a pool without tokens pays not
        even a test on its hot path."""
        # Never through ``__dict__``: reading it materialises the instance dict, which
        # slows every attribute access of the pool by a tenth (measured).
        if self.spec.tokens is not None:
            self._dispatch = self._dispatch_tokens  # type: ignore[method-assign]
        else:
            with contextlib.suppress(AttributeError):  # set only if it had tokens
                del self._dispatch

    def set_spec(self, spec: PoolSpec) -> None:
        """Take a reloaded spec. If its token budget changed, the budgets of the pool's
        addresses are recomputed and waiters dispatched (here and in the pools sharing
        them): a larger budget may fit a waiter now, and a pool that lost its budget
        serves its waiters by slots alone."""
        old = self.spec.tokens
        self.spec = spec
        if spec.tokens == old:
            return
        self._bind_dispatch()
        for replica in list(self.replicas.values()):
            replica.capacity.refresh()
        self._dispatch()
        for replica in list(self.replicas.values()):
            self._dispatch_others(replica.capacity.members)

    def try_acquire_tokens(
        self, request_id: str, tokens: int, eligible: frozenset[str] | None = None
    ) -> Lease | None:
        """``try_acquire`` for a request of ``tokens`` (``TokenSpec.cost``) in a pool with
        a token budget: a lease on a replica with a free slot and ``tokens`` free, or None
        if the caller must wait (``enqueue_ranked`` with ``tokens``).

        Raises RequestTooLarge if ``tokens`` is over the pool's budget per replica: it
        could never be served. Returns None whenever anyone waits: a waiter may hold a
        replica until its tokens free (``_dispatch_tokens``), and only the queue knows
        which; ``enqueue_ranked`` then serves this request at once if it may.
        """
        self._check_tokens(tokens)
        if self.queue:
            return None
        candidates = self.replicas.values() if eligible is None else self._candidates(eligible)
        replica = self._policy([r for r in candidates if r.capacity.fits(tokens)])
        if replica is None:
            return None
        self.counters.granted_immediately += 1
        return self._grant_tokens(replica, request_id, tokens)

    def _check_tokens(self, tokens: int) -> None:
        spec = self.spec.tokens
        if spec is not None and tokens > spec.capacity:
            raise RequestTooLarge(
                f"the request needs about {tokens} tokens (prompt estimate plus max_tokens) "
                f"but a replica of pool {self.name!r} holds at most {spec.capacity}; "
                "lower max_tokens or shorten the prompt"
            )

    def _grant_tokens(self, replica: Replica, request_id: str, tokens: int) -> Lease:
        lease = self._grant(replica, request_id)
        if tokens > 0:
            capacity = replica.capacity
            capacity.reserved[lease.id] = tokens
            capacity.tokens_leased += tokens
        return lease

    def _refund(self, capacity: Capacity, lease: Lease) -> None:
        """Give back what ``lease`` reserved (once: its reservation is popped)."""
        capacity.tokens_leased -= capacity.reserved.pop(lease.id, 0)

    def _enqueue_tokens(
        self,
        request_id: str,
        on_grant: GrantCallback,
        tokens: int,
        timeout: float | None,
        on_timeout: Callable[[], None] | None,
        eligible: frozenset[str] | None,
    ) -> Waiter:
        """``enqueue`` of a waiter that carries its token cost (a pool without bands)."""
        if len(self.queue) >= self.spec.max_waiting:
            self.counters.rejected_queue_full += 1
            raise QueueFull(f"pool {self.name!r} has {len(self.queue)} requests waiting")
        now = self._clock()
        wait = self.spec.queue_timeout if timeout is None else timeout
        waiter = TokenWaiter(request_id, now, now + wait, on_grant, on_timeout, eligible, tokens)
        self.queue.push(waiter)
        self._dispatch()
        return waiter

    def _dispatch_tokens(self) -> None:
        """``_dispatch`` for a pool with a token budget: head of line, per replica.

        Each round the queue selects the next waiter for the replicas with a free slot,
        as ``_dispatch`` does (band, lane, age, eligible set). If none of those in its
        eligible set has its tokens free, the waiter *holds* them: they are withheld
        from every waiter behind it until their tokens free, and selection goes on among
        the other replicas (a waiter whose set avoids the held ones may still be served).
        For a waiter that may use any replica this is strict head of line: nothing
        behind it is served.

        Why not let smaller requests skip ahead? Tokens free gradually as leases end; if
        later, smaller requests could always take what had freed, a large request would
        wait until a replica happened to drain, which under steady load never happens:
        it would starve until its queue timeout, whatever its band. Holding costs some
        utilisation while a large request's tokens gather, bounded by one request's size
        per replica, and keeps the pool's order (bands, fairness, age) exactly.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self.queue
            held: set[str] = set()
            while queue:
                free = [
                    r
                    for r in self.replicas.values()
                    if r.phase is _WARM
                    and r.capacity.leased + r.external < r.capacity.slots
                    and r.address not in held
                ]
                if not free:
                    return
                waiter = queue.select([r.address for r in free])
                if waiter is None:
                    return
                eligible = waiter.eligible
                mine = free if eligible is None else [r for r in free if r.address in eligible]
                tokens = cost_of(waiter)
                replica = self._policy([r for r in mine if r.capacity.fits(tokens)])
                if replica is None:
                    held.update(r.address for r in mine)
                    continue
                queue.take(waiter)
                self._offer(waiter, replica, tokens)
        finally:
            self._dispatching = False

    def _offer(self, waiter: Waiter, replica: Replica, tokens: int) -> None:
        """Grant ``waiter`` a lease on ``replica``, undone if its requester is gone."""
        last_used = replica.last_used
        lease = self._grant_tokens(replica, waiter.request_id, tokens)
        try:
            accepted = waiter.on_grant(lease)
        except Exception:  # a broken callback refuses; it must not leak the slot
            accepted = False
        if accepted:
            waiter.state = WaitState.GRANTED
            waiter.lease = lease
            self.counters.granted_after_wait += 1
        else:
            waiter.state = WaitState.CANCELLED
            self.counters.waits_cancelled += 1
            self._undo(lease)
            replica.last_used = last_used

    # -- time ----------------------------------------------------------------------------

    def expire_waiters(self, now: float) -> list[Waiter]:
        """Time out waiters past their deadline (a backstop for the adapter's own timer)."""
        timed_out = [w for w in self.queue if w.deadline <= now]
        for w in timed_out:
            self.queue.remove(w)
            w.state = WaitState.TIMED_OUT
            self.counters.waits_timed_out += 1
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
        return True

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
            capacity.members[self] = replica
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
        replica = self.replicas.get(address)
        if replica is None:
            return
        replica.phase = Phase.GONE
        if replica.in_flight == 0:
            self._forget(replica)
        else:
            replica.capacity.refresh()
        # A GONE replica no longer bounds the address's slots in other pools.
        self._dispatch_others(replica.capacity.members)

    def set_external(self, address: str, running: int, *, reconcile: bool = False) -> list[Lease]:
        """Record how many requests the replica reports running in total.

        Beyond our leases they count as busy slots. With ``reconcile``, leases the replica
        no longer has are reclaimed (``reclaim``). Returns those leases. Touches only this
        replica's leases (its index), never the registry's.
        """
        replica = self.replicas.get(address)
        if replica is None:
            return []
        capacity = replica.capacity
        reclaimed: list[Lease] = []
        if reconcile and running < capacity.leased:
            reclaimed = self._reclaim(replica, capacity.leased - running)
        # ``running`` is the whole server's load: every pool's leases on it are ours.
        replica.scraped = max(0, running - capacity.leased)
        replica.external = max(replica.scraped, replica.unleased)
        self._dispatch()
        if reclaimed:
            self._dispatch_others(capacity.members)
        return reclaimed

    def reclaim(self, address: str, count: int) -> list[Lease]:
        """End up to ``count`` of this pool's leases on ``address`` as RECONCILED: the
        oldest ones older than ``reconcile_after_seconds`` (younger ones may not have
        reached the replica, or Envoy's count, yet). Only this pool's: another pool's
        leases on a shared address are its own to reconcile. Returns them."""
        replica = self.replicas.get(address)
        if replica is None or count <= 0:
            return []
        reclaimed = self._reclaim(replica, count)
        if reclaimed:
            self._dispatch()
            self._dispatch_others(replica.capacity.members)
        return reclaimed

    def _reclaim(self, replica: Replica, count: int) -> list[Lease]:
        cutoff = self._clock() - self.spec.reconcile_after_seconds
        # In grant order, which is acquisition order; sorted anyway (a stable sort of
        # a handful) so an injected clock that steps back cannot reorder them.
        stale = sorted(
            (lease for lease in replica.leases.values() if lease.acquired_at <= cutoff),
            key=lambda lease: lease.acquired_at,
        )
        reclaimed = stale[:count]
        for lease in reclaimed:
            self._end(lease, EndReason.RECONCILED)
        self.counters.reconciled += len(reclaimed)
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
        if capacity.members.get(self) is replica:
            del capacity.members[self]
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


def _new_queue(priority: PrioritySpec | None) -> WaitQueue:
    if priority is None:
        return WaitQueue()
    return WaitQueue(len(priority.bands), priority.default)
