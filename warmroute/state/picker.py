"""Choosing a replica: the free candidates, ranked by weighted scorers, then one pick.

The pool hands ``Picker.choose`` its replicas and the request's ``Ask``; the picker keeps
those that pass the free test (``warmroute.state.candidates``) and ranks them. Each
scorer of the pool's profile with an opinion on the request rates every candidate in
[0, 1]
(``warmroute.state.scorers``); the candidate with the highest weighted sum wins, ties
going to the least recently used, then to the first in the pool's order. When only one
scorer has an opinion (a pool's plain requests, the hot path), its own one-pass ``pick``
decides, which gives the same answer without building score lists; for a request without
a subset or a token cost, in one pass over the unfiltered replicas (``Scorer.pick_any``).

A profile is a policy's scorers and weights (``PROFILES``; the config's ``policy``
names one):

* ``least_loaded``: load alone;
* ``first_free``: the pool's order alone (packs work on its first replicas);
* ``prefix_affinity``: load, prompt prefix and session. The weights are powers of two so
  the sums stay exact, and make each scorer dominate the ones below it: a prefix score
  step (at least ``1/5/4097``, the deepest prompt the config allows) times 2**17 is
  above any load difference (below 1), and a session match (2**18) is above any prefix
  (at most 2**17) plus load. So the longest prefix wins within the imbalance bound, the
  session's replica above it, and load decides between equals: what the policy always did.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from warmroute.state.ask import Ask
from warmroute.state.candidates import free
from warmroute.state.replica import Replica
from warmroute.state.scorers import SCORERS, Scorer, ScoringContext

Profile = tuple[tuple[str, float], ...]
"""(scorer name, weight) pairs."""

PROFILES: Mapping[str, Profile] = {
    "least_loaded": (("least_loaded", 1.0),),
    "first_free": (("first_free", 1.0),),
    "prefix_affinity": (("least_loaded", 1.0), ("prefix", 2.0**17), ("session", 2.0**18)),
}


_NONE: list[tuple[Scorer, float]] = []  # no conditional scorer applies (never mutated)


class Picker:
    """A profile's scorers, ready to rank candidates for one pool (``context``).

    Raises KeyError for an unknown scorer or policy name. Stateless beyond its profile:
    rebuilt when a reload changes the pool's policy.
    """

    __slots__ = ("_alone", "_always", "_conditional", "_context", "_fast", "profile")

    def __init__(self, profile: Profile, context: ScoringContext) -> None:
        if not profile:
            raise ValueError("a pick profile needs at least one scorer")
        self.profile = profile
        self._context = context
        weighted = [(SCORERS[name], weight) for name, weight in profile]
        self._always = [(s, w) for s, w in weighted if not s.conditional]
        self._conditional = [(s, w) for s, w in weighted if s.conditional]
        # One unconditional scorer decides alone whenever no conditional one applies;
        # with no conditional scorer at all, always (the plain profiles' hot path).
        self._alone: Scorer | None = self._always[0][0] if len(self._always) == 1 else None
        # Its one-pass pick over unfiltered replicas, for requests without a subset or a
        # token cost while no replica is held (the plain request's hot path: no candidate
        # list is built).
        self._fast = None if self._alone is None else self._alone.pick_any

    @classmethod
    def for_policy(cls, policy: str, context: ScoringContext) -> Picker:
        return cls(PROFILES[policy], context)

    def choose(
        self,
        replicas: Iterable[Replica],
        ask: Ask,
        tokens: int | None = None,
        held: Collection[str] | None = None,
    ) -> Replica | None:
        """The best replica of ``replicas`` for ``ask`` among those free for it (the free
        test, ``candidates.free``, with its eligible set and ``tokens``), or None.

        ``held``: the addresses outlier detection holds (``OutlierDetector.held``); empty
        promises none of ``replicas`` is held, so a plain request's pick may skip that
        part of the free test (None: unknown, test each)."""
        applying = self._applying(ask) if self._conditional else _NONE
        fast = self._fast
        if (
            fast is not None
            and not applying
            and held is not None
            and not held
            and tokens is None
            and ask.eligible is None
        ):
            return fast(replicas)
        return self._pick(free(replicas, ask.eligible, tokens), ask, applying)

    def pick(self, candidates: Sequence[Replica], ask: Ask | None = None) -> Replica | None:
        """The best of ``candidates`` (all free, see ``candidates.free``) for ``ask``, or
        None if there are none. Never mutates anything."""
        applying = self._applying(ask) if self._conditional and ask is not None else _NONE
        return self._pick(candidates, ask, applying)

    def _applying(self, ask: Ask) -> list[tuple[Scorer, float]]:
        return [(s, w) for s, w in self._conditional if s.applies(ask)]

    def _pick(
        self,
        candidates: Sequence[Replica],
        ask: Ask | None,
        applying: list[tuple[Scorer, float]],
    ) -> Replica | None:
        if not candidates:
            return None
        if applying:
            return self._best(candidates, ask, self._always + applying)
        if self._alone is not None:
            return self._alone.pick(candidates)
        return self._best(candidates, ask, self._always)

    def _best(
        self,
        candidates: Sequence[Replica],
        ask: Ask | None,
        scorers: list[tuple[Scorer, float]],
    ) -> Replica:
        n = len(candidates)
        totals = [0.0] * n
        for scorer, weight in scorers:
            scores = scorer.score(ask, candidates, self._context)
            if scores is None:
                continue
            for i, s in enumerate(scores):
                totals[i] += weight * s
        best = 0
        for i in range(1, n):
            if totals[i] > totals[best] or (
                totals[i] == totals[best] and candidates[i].last_used < candidates[best].last_used
            ):
                best = i
        return candidates[best]
