"""The director: one routing decision for every request, whatever front end it came from.

Both front ends, own-Envoy ext_proc (``warmroute.extproc.processor``) and the endpoint
picker (``warmroute.epp.protocol``), parse their protocol into a ``Request`` and hand it
here; they only run their streams. ``Director.lease`` runs, in order:

  1. serving: a standby or a stopping instance refuses (NotServing, 503);
  2. pool: the request's pool by name; a reload may have removed it since the front end
     resolved it (UnknownModel, 404);
  3. subset: the gateway's hint resolved against the pool's replicas; nothing in it that
     could ever serve (NoEligibleEndpoint, 503);
  4. price: in a pool with a token budget, the request's cost: its prompt estimated from
     the body's size plus its completion bound (``TokenSpec.cost``); over a replica's
     whole budget it is refused by the pool (RequestTooLarge, 400);
  5. affinity: in a pool with an AffinitySpec, its session header's value and its
     prompt's block hashes;
  6. acquire now: ``Pool.try_acquire(ask)``: the pool filters the free, warm, eligible,
     not held replicas and its weighted scorers pick one (``warmroute.state.picker``);
  7. or wait: the pool's demand is reported (``on_queued``: the autoscaler), admission may
     refuse a wait that could only time out (QueueTimeout, 503, ``admission``), the
     priority band and fairness key are read from the headers, and the request waits in
     the pool's queue (``waiting.acquire``: QueueFull 429, QueueTimeout 503, Displaced
     429; a cancelled wait is withdrawn, or its lease released if granted in the same
     instant). The pool remembers the affinity of whatever it grants;
  8. record: the decision time (without the wait) and the wait, per pool; a DEBUG line.

``finish`` is the completion step both front ends run when a request ends (the access-log
entry, the picker stream's end): the outcome counts for the replica's outlier detection
*before* the lease is released (so the freed slot never goes to a replica it ejects),
then the lease ends and the outcome is counted. ``refused`` is the one place a refusal
is counted and logged (one INFO line), whichever front end or step refused it.

Runs on the registry's event loop; not safe across threads. Protocol-neutral: it imports
no gRPC or Envoy module (checked by tests/unit/test_layering.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from warmroute.director import pricing
from warmroute.director.admission import Admission
from warmroute.director.outliers import OutlierReporter
from warmroute.director.request import Request
from warmroute.director.subsets import eligible_addresses
from warmroute.director.waiting import acquire
from warmroute.errors import NoEligibleEndpoint, NotServing, RequestRejected, UnknownModel
from warmroute.metrics import Metrics
from warmroute.state import Ask, Lease, Pool, Registry
from warmroute.state.outlier import Outcome

logger = logging.getLogger(__name__)

_now = time.perf_counter
_NOT_SERVING = "this warmroute instance is not leasing requests now"


class Director:
    """Leases requests for both front ends (module doc). Collaborators come in here:

    ``outliers`` counts request outcomes for outlier detection; ``admission`` refuses
    waits that cannot be met (default: none refused); ``on_queued(pool)`` is told each
    time a request of ``pool`` has to wait (demand for the autoscaler). ``serving`` is
    False on a standby or while stopping: every request is refused with 503.
    """

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        outliers: OutlierReporter,
        admission: Admission | None = None,
        on_queued: Callable[[str], None] | None = None,
        serving: bool = True,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._outliers = outliers
        self._admission = admission if admission is not None else Admission()
        self._on_queued = on_queued
        self.serving = serving

    def check_serving(self) -> None:
        """Raise NotServing unless this instance leases requests now. ``lease`` checks it
        too; a front end calls it first to refuse before parsing anything."""
        if not self.serving:
            raise NotServing(_NOT_SERVING)

    async def lease(self, request: Request) -> Lease:
        """A lease for ``request`` (module doc, steps 1-8). Raises a RequestRejected
        subclass (not yet counted: the front end passes it to ``refused``); cancelling
        the calling task while it waits leaves nothing behind."""
        started = request.received_at or _now()
        if not self.serving:
            raise NotServing(_NOT_SERVING)
        pool = self._registry.pools.get(request.pool)
        if pool is None:
            raise UnknownModel(f"pool {request.pool!r} is not configured")
        spec = pool.spec
        if request.subset is None and spec.tokens is None and spec.affinity is None:
            ask = Ask(request.request_id)  # the plain request: nothing to read
        else:
            ask = self._ask(pool, request)
        lease = pool.try_acquire(ask)
        waited = 0.0
        if lease is None:
            lease, waited = await self._wait(pool, request, ask)
        self._metrics.pool(request.pool).decided(waited, _now() - started - waited)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s -> %s lease %s (pool %s, model %s, waited %.1f ms, subset %s)",
                request.request_id, lease.address, lease.id[:8], pool.name, request.model,
                waited * 1e3, "none" if ask.eligible is None else len(ask.eligible),
            )  # fmt: skip
        return lease

    def _ask(self, pool: Pool, request: Request) -> Ask:
        """Steps 3-5: the request's eligible set, price and affinity in ``pool``
        (``pricing``)."""
        spec = pool.spec
        source = request.source
        eligible = None
        if request.subset is not None:
            eligible = eligible_addresses(request.subset, pool.addresses(live_only=False))
            if not pool.can_ever_serve(eligible):
                raise NoEligibleEndpoint(
                    f"no replica of pool {pool.name!r} in the gateway's subset "
                    f"({len(request.subset)} endpoints) can serve requests"
                )
        tokens = None if spec.tokens is None else pricing.cost(spec.tokens, source)
        affinity = None if spec.affinity is None else pricing.hint(spec.affinity, source)
        return Ask(request.request_id, eligible, tokens, affinity)

    async def _wait(self, pool: Pool, request: Request, ask: Ask) -> tuple[Lease, float]:
        """Step 7: report demand, admit, rank, then wait in the pool's queue. Returns the
        lease and the seconds it waited."""
        if self._on_queued is not None:
            self._on_queued(pool.name)
        self._admission.check(pool)  # 503 + Retry-After now if it could only time out
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s waits in pool %s: %s",
                request.request_id, pool.name, self._admission.explain(pool),
            )  # fmt: skip
        priority = pool.spec.priority
        if priority is not None:
            band, key = pricing.rank(priority, request.source, request.model)
            ask = ask._replace(band=band, key=key)
        wait_start = _now()
        try:
            return await acquire(pool, ask), _now() - wait_start
        except asyncio.CancelledError:
            logger.debug("request %s left while waiting in pool %s", request.request_id, pool.name)
            raise

    def refused(self, error: RequestRejected, request_id: str, pool: str | None) -> None:
        """Count and log a refusal (``pool``: the label it is counted under, None before
        a pool was chosen). The front end answers it (``warmroute.request.responses``)."""
        label = "none" if pool is None else pool
        outcome = f"rejected_{error.code}"
        self._metrics.pool(label).count(outcome)
        # One INFO line, never WARNING: under overload every request may be refused, and
        # the metric above is what alerts; the line is for finding one request.
        logger.info("request %s pool %s %s: %s", request_id, label, outcome, error.message)

    def finish(self, lease: Lease, outcome: str, for_replica: Outcome, duration: float) -> bool:
        """The request on ``lease`` ended with ``outcome`` (``warmroute_requests_total``'s
        label) after ``duration`` seconds; ``for_replica`` is how it counts for outlier
        detection (IGNORED: not at all). Returns False if the lease had already ended
        (then nothing is counted)."""
        # Before the release: the slot it frees must not go to a replica this ejects.
        self._outliers.report(lease, for_replica)
        if not lease.release():  # FINISHED
            return False
        self._metrics.pool(lease.pool.name).finished(outcome, duration)
        return True
