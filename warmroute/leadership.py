"""The takeover fence: what a new leader does before it trusts its own slot counts.

The previous leader's requests may still be running on any replica, and their ends will
never be reported here. So on becoming leader every known replica counts all its slots as
taken (a synthetic external load) until either a metrics scrape reports its real load
(which replaces the fence) or the grace period ends, whichever comes first. Replicas
scraped after the fence went up keep their scraped load when the grace period ends.

Times come from the registry's clock, so ``last_scrape`` must stamp scrapes with that
clock too. Runs on the event loop that owns the registry; not safe across threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from warmroute.state.events import ReplicaExternalLoad
from warmroute.state.registry import Registry

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (pool, address)


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


class TakeoverFence:
    """Fences every replica of ``registry`` at :meth:`begin`, lifts it after the grace.

    ``last_scrape(key)`` is the registry-clock time of the replica's last metrics scrape
    (``-inf`` if never). ``schedule(delay, fn)`` runs ``fn`` after ``delay`` seconds and
    returns something to ``cancel()``; by default the running loop's ``call_later``.
    """

    def __init__(
        self,
        registry: Registry,
        last_scrape: Callable[[Key], float],
        *,
        schedule: Schedule = _loop_call_later,
    ) -> None:
        self._registry = registry
        self._last_scrape = last_scrape
        self._schedule = schedule
        self._fenced: list[Key] = []
        self._since = 0.0
        self._timer: Timer | None = None

    @property
    def fenced(self) -> tuple[Key, ...]:
        """The replicas fenced now (empty once lifted or cancelled)."""
        return tuple(self._fenced)

    def begin(self, grace: float) -> int:
        """Fence every replica now, lifting after ``grace`` seconds; returns how many.

        A second ``begin`` (leadership lost and won again) replaces the first."""
        self.cancel()
        self._since = self._registry.clock()
        registry = self._registry
        for name in registry.pool_names():
            load = registry.load(name)
            for r in load.replicas if load is not None else ():
                registry.apply(ReplicaExternalLoad(name, r.address, r.slots))
                self._fenced.append((name, r.address))
        self._timer = self._schedule(grace, self._lift_now)
        logger.info(
            "leading: %d replicas fenced for up to %gs until their load is known",
            len(self._fenced), grace,
        )  # fmt: skip
        return len(self._fenced)

    def _lift_now(self) -> None:
        self.lift()

    def lift(self) -> int:
        """End the fence: replicas not scraped since it went up count as idle again (their
        scrape, when it comes, says otherwise). Returns how many were lifted."""
        self._timer = None
        lifted = 0
        for name, address in self._fenced:
            if self._registry.replica(name, address) is None:
                continue  # gone since: nothing to lift
            if self._last_scrape((name, address)) < self._since:
                self._registry.apply(ReplicaExternalLoad(name, address, 0))
                lifted += 1
        self._fenced = []
        return lifted

    def cancel(self) -> None:
        """Stop the pending lift (leadership lost, or shutting down); the fence stays as it
        is until the next :meth:`begin`. Safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fenced = []
