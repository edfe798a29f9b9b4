"""What a scorer is: a rating of the free replicas for one request.

A scorer sees the request (its ``Ask``: eligible set, token cost, affinity hint, band)
and the replicas that passed the free test (``warmroute.state.candidates``), with their
signals: their address's load across every pool (``Capacity.leased``), the load the
model server reports beyond our leases (``Replica.external``, from the typed
``ReplicaExternalLoad`` event), their slots, when they were last used. It returns one
score per candidate in [0, 1], higher is better, or None when it has no opinion on this
request (a prefix scorer for a request without a prompt hint). The picker
(``warmroute.state.picker``) adds the scores up with the pool's weights and takes the
best. Scorers never mutate replicas, and keep no state of their own: what they remember
lives in the pool (``ScoringContext``), so one instance serves every pool.

To add one (e.g. a KV-cache scorer): the signal reaches the replica as a typed event
(``warmroute.state.events``; discovery parses it, ``warmroute.discovery.signals``), then
a module in this package with a ``Scorer`` subclass, its unit test, its name in
``SCORERS`` (``warmroute.state.scorers``) and in a profile
(``warmroute.state.picker.PROFILES``) that a config ``policy`` literal names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar, Protocol

from warmroute.state.affinity import AffinityMemory, AffinitySpec
from warmroute.state.ask import Ask
from warmroute.state.candidates import free
from warmroute.state.replica import Replica


class ScoringContext(Protocol):
    """What a scorer may read of its pool besides the candidates (a ``Pool``)."""

    @property
    def affinity(self) -> AffinityMemory | None:
        """Who served which prompt prefix or session (None: nothing remembered yet)."""

    @property
    def affinity_spec(self) -> AffinitySpec | None:
        """The pool's affinity settings (None: the pool has none)."""


class Scorer:
    """Rates candidates for a request (module doc). Subclasses set ``name`` and
    override ``score``; ``conditional`` ones have an opinion only on some requests
    (``applies``), so a request without one is picked as if they were not there."""

    name: ClassVar[str] = ""
    conditional: ClassVar[bool] = False

    def applies(self, ask: Ask | None) -> bool:
        """False if this scorer has no opinion on ``ask`` (its scores would all be 0)."""
        return True

    def score(
        self, ask: Ask | None, candidates: Sequence[Replica], context: ScoringContext
    ) -> Sequence[float] | None:
        """One score in [0, 1] per candidate, in their order; None: no opinion."""
        raise NotImplementedError

    def pick(self, candidates: Sequence[Replica]) -> Replica | None:
        """The best candidate when this scorer alone decides (highest score, then least
        recently used, then the first). Only for unconditional scorers whose scores
        depend on the replicas alone; subclasses override it with one fused pass."""
        raise NotImplementedError

    def pick_any(self, replicas: Iterable[Replica]) -> Replica | None:
        """``pick(candidates.free(replicas))`` in one pass over unfiltered replicas none of
        which outlier detection holds: the plain request's hot path. Subclasses that
        ``pick`` override it the same way (a property test holds the two equal)."""
        return self.pick(free(replicas))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
