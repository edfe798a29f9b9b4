"""Least loaded: fewest requests in flight relative to the replica's slots.

Spreading by load keeps a multi-slot replica from filling while another idles; the
picker's tie-break (least recently used) rotates work across equal replicas so none
goes cold in caches. Load is the address's, across every pool, plus the external load
its model server reports (``Replica.external``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from warmroute.state.ask import Ask
from warmroute.state.replica import Phase, Replica
from warmroute.state.scorers.base import Scorer, ScoringContext

_WARM = Phase.WARM  # a local: enum member access is a descriptor call in Python 3.11


class LeastLoaded(Scorer):
    """Score ``1 - busy / slots``: an idle replica 1, a nearly full one near 0."""

    name = "least_loaded"

    def score(
        self, ask: Ask | None, candidates: Sequence[Replica], context: ScoringContext
    ) -> list[float]:
        return [1.0 - (r.capacity.leased + r.external) / r.capacity.slots for r in candidates]

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        """Fewest in flight relative to size, then least recently used, then the first:
        the order ``score`` and the picker's tie-break give, in one pass (the request
        hot path)."""
        best: Replica | None = None
        best_load = 2.0
        best_used = 0.0
        for r in candidates:
            c = r.capacity
            load = (c.leased + r.external) / c.slots
            if load < best_load or (load == best_load and r.last_used < best_used):
                best, best_load, best_used = r, load, r.last_used
        return best

    def pick_any(self, replicas: Iterable[Replica]) -> Replica | None:
        """``pick`` over the replicas free among ``replicas`` (none of them held), the free
        test (``candidates.free``) applied in the same pass."""
        best: Replica | None = None
        best_load = 2.0
        best_used = 0.0
        for r in replicas:
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
