"""Session: a request of a session goes back to the replica that served it last.

The session key is a request header's value (``AffinitySpec.session_header``); the pool
remembers the replica it last granted each session (``AffinityMemory``). That replica
scores 1, every other 0, unless it is beyond the imbalance bound
(``scorers.imbalance``). In the ``prefix_affinity`` profile its weight puts a session
match above any prefix match.
"""

from __future__ import annotations

from collections.abc import Sequence

from warmroute.state.ask import Ask
from warmroute.state.replica import Replica
from warmroute.state.scorers.base import Scorer, ScoringContext
from warmroute.state.scorers.imbalance import within


class Session(Scorer):
    """Rates the session's last replica 1 (module doc)."""

    name = "session"
    conditional = True

    def applies(self, ask: Ask | None) -> bool:
        return ask is not None and ask.affinity is not None and bool(ask.affinity.session)

    def score(
        self, ask: Ask | None, candidates: Sequence[Replica], context: ScoringContext
    ) -> list[float] | None:
        memory, spec = context.affinity, context.affinity_spec
        if memory is None or spec is None or ask is None or ask.affinity is None:
            return None
        last = memory.session_of(ask.affinity.session)
        if last is None:
            return None
        bounded = within(candidates, spec.max_imbalance)
        return [
            1.0 if ok and r.address == last else 0.0
            for r, ok in zip(candidates, bounded, strict=True)
        ]
