"""Prefix: prefer the replica that served the longest leading part of this prompt.

A model server keeps the KV cache of prompts it served (vLLM's prefix caching), so a
request that starts like a recent one is cheaper where that one ran. The pool remembers
which replicas it granted each prompt block (``AffinityMemory``); a candidate's score is
the share of the request's blocks it served, with recency (the replica granted the
deepest block last ranks first) breaking ties between equal depths. Candidates beyond the
imbalance bound (``scorers.imbalance``) score 0.

Scores are ``(depth + recency / (PER_KEY + 1)) / (blocks + 1)``: distinct (depth,
recency) pairs differ by at least ``1 / ((PER_KEY + 1) * (blocks + 1))``, which the
``prefix_affinity`` profile's weight turns into more than any load difference
(``warmroute.state.picker``), so a deeper prefix always wins within the bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from warmroute.state.affinity import PER_KEY, Score
from warmroute.state.ask import Ask
from warmroute.state.replica import Replica
from warmroute.state.scorers.base import Scorer, ScoringContext


class Prefix(Scorer):
    """Rates candidates by the prompt prefix they served (module doc)."""

    name = "prefix"
    conditional = True

    def applies(self, ask: Ask | None) -> bool:
        return ask is not None and ask.affinity is not None and bool(ask.affinity.blocks)

    def score(
        self, ask: Ask | None, candidates: Sequence[Replica], context: ScoringContext
    ) -> list[float] | None:
        memory, spec = context.affinity, context.affinity_spec
        if memory is None or spec is None or ask is None or ask.affinity is None:
            return None
        blocks = ask.affinity.blocks
        served = memory.prefix_scores(blocks)
        if not served:
            return None
        return prefix_scores(candidates, served, len(blocks), spec.max_imbalance)


def prefix_scores(
    candidates: Sequence[Replica], served: Mapping[str, Score], blocks: int, max_imbalance: int
) -> list[float]:
    """The scores of ``candidates`` given what each address ``served`` (depth, recency)
    of a prompt of ``blocks`` blocks (module doc)."""
    scale = 1.0 / (blocks + 1)
    step = 1.0 / (PER_KEY + 1)
    busy = [r.capacity.leased + r.external for r in candidates]
    least = min(busy, default=0)
    scores = []
    for r, b in zip(candidates, busy, strict=True):
        # Only within the imbalance bound (``scorers.imbalance``), computed inline here:
        # this runs on every request with a prompt hint.
        found = served.get(r.address) if b - least <= max_imbalance else None
        scores.append(0.0 if found is None else (found[0] + found[1] * step) * scale)
    return scores
