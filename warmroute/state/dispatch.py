"""Dispatch: handing free slots to a pool's waiters, the moment they free.

Runs inside every call that may free a slot (a release, a replica turning warm, load
reported lower, an ejection ending, a waiter leaving a token pool's line): push, never
poll. Two strategies, chosen by the pool's spec; each round serves the waiter the queue
selects for the free replicas (highest band, then the lane whose turn it is, then its
oldest waiter a free replica may serve: ``warmroute.state.waiters``) on the replica the
pool's picker chooses for it among those it may use (``warmroute.state.picker``):

* ``SlotDispatch`` (pools without a token budget): until no waiter can use a free
  replica. With only the default lane's unrestricted waiters queued, the queue's head
  takes the pick among every free replica: one pop.
* ``TokenDispatch`` (pools with ``tokens:``): head of line, per replica. A waiter that
  fits none of its free replicas *holds* them: they are withheld from every waiter behind
  it until their tokens free, and selection goes on among the other replicas (a waiter
  whose set avoids the held ones may still be served). For a waiter that may use any
  replica this is strict head of line.

  Why not let smaller requests skip ahead? Tokens free gradually as leases end; if later,
  smaller requests could always take what had freed, a large request would wait until a
  replica happened to drain, which under steady load never happens: it would starve until
  its queue timeout, whatever its band. Holding costs some utilisation while a large
  request's tokens gather, bounded by one request's size per replica, and keeps the
  pool's order (bands, fairness, age) exactly.

A grant whose requester is gone (``on_grant`` returns False or raises) is undone as if it
never happened and the slot goes on to the next waiter (``offer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmroute.state.ask import Ask
from warmroute.state.candidates import free
from warmroute.state.replica import Replica
from warmroute.state.waiters import Waiter, WaitState

if TYPE_CHECKING:
    from warmroute.state.pool import Pool

_ANY = Ask("")  # what a waiter built without an ask asks: any free replica


class SlotDispatch:
    """Dispatch by slots (module doc). Owned by its pool; not re-entrant (the pool
    guards it)."""

    __slots__ = ("pool",)

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def run(self) -> None:
        pool = self.pool
        queue = pool.queue
        unrestricted = queue.unrestricted
        pick = pool.picker.pick
        while True:
            if queue.restricted:
                candidates = free(pool.replicas.values())
                if not candidates:
                    return
                waiter = queue.select([r.address for r in candidates])
                if waiter is None:
                    return
                eligible = waiter.eligible
                if eligible is not None:
                    candidates = [r for r in candidates if r.address in eligible]
                replica = pick(candidates, waiter.ask)
                if replica is None:  # pragma: no cover - select found one it may use
                    return
                queue.take(waiter)
            elif unrestricted:
                waiter = next(iter(unrestricted))
                replica = pool.picker.choose(
                    pool.replicas.values(), waiter.ask or _ANY, None, pool.outliers.held
                )
                if replica is None:
                    return
                del unrestricted[waiter]
            else:
                return
            offer(pool, waiter, replica, 0)


class TokenDispatch:
    """Dispatch by slots and tokens, head of line per replica (module doc)."""

    __slots__ = ("pool",)

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def run(self) -> None:
        pool = self.pool
        queue = pool.queue
        held: set[str] = set()
        while queue:
            candidates = [r for r in free(pool.replicas.values()) if r.address not in held]
            if not candidates:
                return
            waiter = queue.select([r.address for r in candidates])
            if waiter is None:
                return
            eligible = waiter.eligible
            mine = (
                candidates if eligible is None else [r for r in candidates if r.address in eligible]
            )
            tokens = waiter.tokens or 0
            replica = pool.picker.pick([r for r in mine if r.capacity.fits(tokens)], waiter.ask)
            if replica is None:
                held.update(r.address for r in mine)
                continue
            queue.take(waiter)
            offer(pool, waiter, replica, tokens)


def offer(pool: Pool, waiter: Waiter, replica: Replica, tokens: int) -> None:
    """Grant ``waiter`` (already out of the queue) a lease on ``replica`` reserving
    ``tokens``; undone if its requester is gone."""
    ledger = pool.ledger
    last_used = replica.last_used
    lease = ledger.grant(replica, waiter.request_id, tokens)
    try:
        accepted = waiter.on_grant(lease)
    except Exception:  # a broken callback refuses; it must not leak the slot
        accepted = False
    if accepted:
        waiter.state = WaitState.GRANTED
        waiter.lease = lease
        ledger.counters.granted_after_wait += 1
        if waiter.ask is not None:
            pool.remember(waiter.ask, replica)
    else:
        # Its requester is gone: undo as if never granted.
        waiter.state = WaitState.CANCELLED
        ledger.counters.waits_cancelled += 1
        ledger.undo(lease, last_used)
