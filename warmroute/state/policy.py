"""Pick policies: plain functions choosing one replica among a pool's replicas.

A policy returns a replica that is WARM with a free slot (``Replica.free > 0``), or None
if there is none; it must not mutate them. Load and free slots are the address's, across
every pool (``Replica.capacity``), plus the replica's external load. It runs on every
lease, so it reads the fields directly rather than through properties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from warmroute.state.affinity import Score
from warmroute.state.replica import Phase, Replica

_WARM = Phase.WARM  # a local: enum member access is a descriptor call in Python 3.11

Policy = Callable[[Iterable[Replica]], Replica | None]


def least_loaded(candidates: Iterable[Replica]) -> Replica | None:
    """Fewest in flight relative to size, then least recently used.

    Spreading by load keeps a multi-slot replica from filling while another idles, and
    the LRU tie-break rotates work across equal replicas so none goes cold in caches.
    """
    best: Replica | None = None
    best_load = 2.0
    best_used = 0.0
    for r in candidates:
        if r.phase is not _WARM:
            continue
        c = r.capacity
        busy = c.leased + r.external
        slots = c.slots
        if busy >= slots:
            continue
        load = busy / slots
        if load < best_load or (load == best_load and r.last_used < best_used):
            best, best_load, best_used = r, load, r.last_used
    return best


def first_free(candidates: Iterable[Replica]) -> Replica | None:
    """The first replica with a free slot: packs work onto few replicas (before a scale-down)."""
    for r in candidates:
        if r.phase is _WARM:
            c = r.capacity
            if c.leased + r.external < c.slots:
                return r
    return None


def prefix_affinity(
    candidates: Iterable[Replica], scores: Mapping[str, Score], max_imbalance: int
) -> Replica | None:
    """The free replica with the highest affinity score (``AffinityMemory.scores``: the
    longest prompt prefix it served, or the request's session, then the most recent),
    among those with at most ``max_imbalance`` requests in flight above the least busy free
    replica; ``least_loaded``'s pick when none of those scores.

    In flight counts the address's leases plus external load, as for the slot check. Among
    equal scores the less loaded wins, then the least recently used.
    """
    free: list[tuple[Replica, int]] = []
    least = 1 << 62
    for r in candidates:
        if r.phase is not _WARM:
            continue
        c = r.capacity
        busy = c.leased + r.external
        if busy >= c.slots:
            continue
        free.append((r, busy))
        least = min(least, busy)
    best: Replica | None = None
    best_key: tuple[Score, float, float] = ((0, 0), 0.0, 0.0)
    for r, busy in free:
        score = scores.get(r.address)
        if score is None or busy - least > max_imbalance:
            continue
        key = (score, -busy / r.capacity.slots, -r.last_used)
        if best is None or key > best_key:
            best, best_key = r, key
    return best if best is not None else least_loaded(r for r, _ in free)


# A pool with ``prefix_affinity`` picks like least_loaded where it has no hint: requests
# without one and every queued waiter (``Pool.try_acquire`` applies the hint).
POLICIES: dict[str, Policy] = {
    "least_loaded": least_loaded,
    "first_free": first_free,
    "prefix_affinity": least_loaded,
}
