"""Outlier detection at the edge: request outcomes in; ejections logged, counted and timed.

Both front ends feed it, through ``Director.finish``, the way each request ended for its
replica, *before* releasing the lease (so the freed slot never goes to a replica this
very outcome ejects): the access log in own-Envoy mode (``extproc.accesslog``), the
response phase in endpoint picker mode (``epp.protocol``). The decisions are the core's
(``warmroute.state.outlier``); this adapter only

* logs exactly one line per ejection (WARNING) and per return (INFO), each with the pool,
  the replica, the reason, the failure counts and the ejection time;
* counts ``warmroute_replica_ejections_total`` and ``warmroute_replica_full_answers_total``;
* arms one timer on the event loop for the next return or back-off end the core says is
  due, and restores then: a replica coming back is a slot freeing, pushed to the waiters
  at once, never polled. The housekeeping tick calls ``restore`` too, as a backstop (and
  for replicas a reload or a shrinking pool returns early).

Use from the event loop that owns the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from warmroute.metrics import Metrics
from warmroute.state import Lease, Registry
from warmroute.state.outlier import Ejection, Outcome, Return

logger = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


class OutlierReporter:
    """Feeds outcomes to ``registry``'s outlier detection and times its returns.

    ``schedule(delay, fn)`` runs ``fn`` after ``delay`` seconds and returns something to
    ``cancel()``; by default the running loop's ``call_later``. Times are the registry's
    clock.
    """

    def __init__(
        self, registry: Registry, metrics: Metrics, *, schedule: Schedule = _loop_call_later
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._schedule = schedule
        self._timer: Timer | None = None
        self._armed_for = 0.0

    def report(self, lease: Lease, outcome: Outcome) -> None:
        """Count how ``lease``'s request ended for its replica. Call before releasing it."""
        if outcome is Outcome.SUCCESS:
            lease.pool.report(lease, outcome)  # resets its count of failures in a row
            return
        if outcome is Outcome.IGNORED:
            return
        pool = lease.pool.name
        if outcome is Outcome.FULL:
            self._metrics.replica_full_answers.labels(pool, lease.address).inc()
        event = self._registry.report(lease, outcome)
        if event is None:
            return
        if isinstance(event, Ejection):
            self._metrics.replica_ejections.labels(pool, event.address).inc()
            logger.warning(
                "replica %s of pool %s ejected for %.1fs: %s (%d failures in a row, %d of %d "
                "requests failed in the window); ejection %d in a row, %d of %d allowed ejected",
                event.address, pool, event.seconds, event.reason, event.consecutive,
                event.failures, event.requests, event.count, event.ejected, event.allowed,
            )  # fmt: skip
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "replica %s of pool %s answered that it is full (request %s): no lease for %.1fs",
                event.address, pool, lease.request_id, event.seconds,
            )  # fmt: skip
        self._arm()

    def restore(self) -> list[Return]:
        """End what is due now (ejections, back-offs), log each return, re-arm the timer.
        Called by the timer and by the housekeeping tick."""
        returns = self._registry.restore_outliers()
        for r in returns:
            logger.info(
                "replica %s of pool %s back in service after %.1fs ejected (%s: %d failures "
                "in a row, %d of %d requests failed in the window)%s",
                r.address, r.pool, r.seconds, r.reason, r.consecutive, r.failures, r.requests,
                " early: detection turned off or too few warm replicas left" if r.early else "",
            )  # fmt: skip
        self._arm()
        return returns

    def close(self) -> None:
        """Cancel the pending timer (shutting down). Safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        due = self._registry.next_outlier_due()
        if due is None:
            self.close()
            return
        if self._timer is not None and self._armed_for <= due:
            return  # an earlier (or the same) moment is already armed
        self.close()
        self._armed_for = due
        self._timer = self._schedule(max(0.0, due - self._registry.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.restore()
