"""Early, honest 503: refuse at once a request that could only time out in the queue.

When a request has to wait, the pool's forecast (``Pool.predicted_wait``: learned service
time over the slots there are or are coming) says when it would get a slot. If that is
past its queue timeout, and a cold replica could not be warm before then either (the
pool's cold-start estimate is past it too, or the pool cannot grow), queueing it only
holds a connection to answer 503 later. ``early_reject`` answers now, with
``Retry-After`` set to the predicted wait rounded up: when a slot is expected to free.

Opt-in per pool (``queue.reject_when_unmeetable``). Before any request has finished the
pool has no service time, so nothing is refused on a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from warmroute.errors import QueueTimeout
from warmroute.state import Phase, Pool


@dataclass(frozen=True, slots=True)
class Rule:
    """One pool's admission settings, from its config (built by the wiring)."""

    # The cold start to assume until one is measured (``autoscale.cold_start_seconds``);
    # None: the pool is not autoscaled, no replica will be started for this request.
    cold_start: float | None
    # The autoscaler's bound: a pool with this many live replicas cannot start another.
    max_replicas: int | None = None


def early_reject(pool: Pool, rule: Rule, timeout: float | None = None) -> QueueTimeout | None:
    """The 503 to answer now instead of queueing in ``pool``, or None to queue.

    ``timeout`` is the request's queue timeout (default: the pool's). Reads the pool only;
    call it from the loop that owns the registry, after ``try_acquire`` said wait.
    """
    limit = pool.spec.queue_timeout if timeout is None else timeout
    prior = math.inf if rule.cold_start is None else rule.cold_start
    wait = pool.predicted_wait(prior)
    if wait is None or wait <= limit:
        return None
    cold = _cold_start(pool, rule)
    if cold <= limit:
        return None  # a replica started now would serve it in time
    if rule.cold_start is None:
        why = "the pool does not scale"
    elif math.isinf(cold):
        why = "the pool is at its max replicas"
    else:
        why = f"a cold start takes {cold:.3g}s"
    shown = "no slot is coming" if math.isinf(wait) else f"predicted wait {wait:.3g}s"
    retry = limit if math.isinf(wait) else wait
    return QueueTimeout(
        f"pool {pool.name!r}: {shown} exceeds the queue timeout {limit:g}s and {why}",
        retry_after=float(max(1, math.ceil(retry))),
    )


def _cold_start(pool: Pool, rule: Rule) -> float:
    if rule.cold_start is None:
        return math.inf
    if rule.max_replicas is not None:
        live = sum(r.phase is not Phase.GONE for r in pool.replicas.values())
        if live >= rule.max_replicas:
            return math.inf
    return pool.forecast.cold.estimate(rule.cold_start)


class Admission:
    """The rules of the pools that refuse unmeetable requests (pool name -> ``Rule``);
    a pool not listed always queues.

    Either fixed ``rules``, or ``pools``: a callable returning the current config's pools
    (``lambda: manager.config.pools``), whose rules are rebuilt when it returns a
    different list (a config reload), so the wiring needs no reload hook.
    """

    def __init__(
        self,
        rules: Mapping[str, Rule] | None = None,
        *,
        pools: Callable[[], Sequence[PoolSettings]] | None = None,
    ) -> None:
        self.rules: Mapping[str, Rule] = dict(rules or {})
        self._pools = pools
        self._seen: Sequence[PoolSettings] | None = None

    def rule(self, pool: str) -> Rule | None:
        if self._pools is not None:
            current = self._pools()
            if current is not self._seen:
                self._seen, self.rules = current, rules_from(current)
        return self.rules.get(pool)

    def check(self, pool: Pool, timeout: float | None = None) -> None:
        """Raise the early ``QueueTimeout`` for a request about to queue in ``pool``."""
        rule = self.rule(pool.name)
        if rule is None:
            return
        rejected = early_reject(pool, rule, timeout)
        if rejected is not None:
            raise rejected

    def explain(self, pool: Pool) -> str:
        """Why a request about to queue waits, for its DEBUG line: how many are ahead of
        it and its predicted wait."""
        rule = self.rule(pool.name)
        prior = math.inf if rule is None or rule.cold_start is None else rule.cold_start
        wait = pool.predicted_wait(prior)
        shown = "no service time learned yet" if wait is None else f"predicted wait {wait:.3g}s"
        return f"{len(pool.queue)} ahead, {shown}"


class _Autoscale(Protocol):
    @property
    def cold_start_seconds(self) -> float: ...
    @property
    def max_replicas(self) -> int: ...


class _Queue(Protocol):
    @property
    def reject_when_unmeetable(self) -> bool: ...


class PoolSettings(Protocol):
    """What ``rules_from`` reads of a pool's config (``warmroute.config.PoolConfig``; the
    request path does not import the config module)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> _Queue: ...
    @property
    def autoscale(self) -> _Autoscale | None: ...


def rules_from(pools: Iterable[PoolSettings]) -> dict[str, Rule]:
    """The rules of the pools with ``queue.reject_when_unmeetable``, for ``Admission``."""
    return {
        p.name: Rule(
            None if p.autoscale is None else p.autoscale.cold_start_seconds,
            None if p.autoscale is None else p.autoscale.max_replicas,
        )
        for p in pools
        if p.queue.reject_when_unmeetable
    }
