"""Pick policies: plain functions choosing one replica among candidates.

A policy sees only replicas that are WARM with at least one free slot and returns one of
them; it must not mutate them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from warmroute.state.replica import Replica

Policy = Callable[[Iterable[Replica]], Replica | None]


def least_loaded(candidates: Iterable[Replica]) -> Replica | None:
    """Fewest in flight relative to size, then least recently used.

    Spreading by load keeps a multi-slot replica from filling while another idles, and
    the LRU tie-break rotates work across equal replicas so none goes cold in caches.
    """
    best: Replica | None = None
    best_key = (2.0, 0.0)
    for r in candidates:
        key = ((r.in_flight + r.external) / r.slots, r.last_used)
        if key < best_key:
            best, best_key = r, key
    return best


def first_free(candidates: Iterable[Replica]) -> Replica | None:
    """The first candidate: packs work onto few replicas (useful before a scale-down)."""
    for r in candidates:
        return r
    return None


POLICIES: dict[str, Policy] = {"least_loaded": least_loaded, "first_free": first_free}
