"""First free: the pool's order decides, packing work onto its first replicas.

Used before a scale-down, so that the replicas at the end of the pool drain. The score
falls with the candidate's position, so no two candidates tie.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from warmroute.state.ask import Ask
from warmroute.state.replica import Phase, Replica
from warmroute.state.scorers.base import Scorer, ScoringContext

_WARM = Phase.WARM


class FirstFree(Scorer):
    """Score ``1 - position / count``: the first candidate 1, the last above 0."""

    name = "first_free"

    def score(
        self, ask: Ask | None, candidates: Sequence[Replica], context: ScoringContext
    ) -> list[float]:
        n = len(candidates)
        return [1.0 - i / n for i in range(n)]

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        return candidates[0] if candidates else None

    def pick_any(self, replicas: Iterable[Replica]) -> Replica | None:
        """The first free replica (none of them held; the free test of
        ``candidates.free``, in one pass)."""
        for r in replicas:
            if r.phase is _WARM:
                c = r.capacity
                if c.leased + r.external < c.slots:
                    return r
        return None
