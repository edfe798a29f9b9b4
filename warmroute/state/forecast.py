"""Wait for a warm replica or start a cold one: what a pool has learned, and the choice.

Each ``Pool`` owns a ``Forecast`` and feeds it two measurements, both from the core's own
events (no adapter reports them):

* **service time**: the duration of every lease that ends FINISHED (granted to released,
  i.e. Envoy's view of the request on the replica). An EWMA gives the mean the
  prediction uses; a ring of the last ``RING`` durations gives quantiles for ``/state``.
  Leases that end otherwise (cancelled, expired, reconciled) say nothing about service.
* **cold start**, per replica: from the moment the pool first sees it LOADING to the
  moment it turns WARM. The pool's estimate is the median of the last ``RING`` ones (one
  slow node does not move it); until one is measured, the caller's prior (the config's
  ``autoscale.cold_start_seconds``). A replica's time before discovery saw it (scheduling,
  image pull) is not in it: the prior should cover that if it matters.

``predict_wait`` and ``decide`` are pure functions of numbers, so the policy is tested
without a pool; ``Forecast.supply`` gathers the numbers from a pool's replicas. Nothing here reads a
clock: every call takes ``now``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from warmroute.state.replica import Phase, Replica

RING = 256  # measurements kept for quantiles (service) and the median (cold start)
COLD_RING = 16
EWMA_ALPHA = 0.1  # weight of a new service time in the mean: ~ the last 20 requests


class ServiceStats:
    """Learned service time of one pool (seconds). Not thread-safe, like its pool."""

    __slots__ = ("_ring", "count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._ring: deque[float] = deque(maxlen=RING)

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.count += 1
        # The first sample is the mean; then an EWMA, so a changed workload shows within
        # tens of requests.
        self.mean = seconds if self.count == 1 else self.mean + EWMA_ALPHA * (seconds - self.mean)
        self._ring.append(seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the recent durations, None before any."""
        return _quantile(self._ring, q)


class ColdStarts:
    """Cold-start times of one pool's replicas (seconds), from LOADING to WARM."""

    __slots__ = ("_loading_since", "_recent", "count")

    def __init__(self) -> None:
        self._loading_since: dict[str, float] = {}
        self._recent: deque[float] = deque(maxlen=COLD_RING)
        self.count = 0

    def transition(self, address: str, old: Phase | None, new: Phase, now: float) -> None:
        """A replica went from phase ``old`` (None: new to the pool) to ``new``.

        Entering LOADING starts the clock (staying in it does not restart it); LOADING ->
        WARM is one cold start; any other phase drops it, so a replica that went away
        while loading is never counted.
        """
        if new is Phase.LOADING:
            if old is not Phase.LOADING or address not in self._loading_since:
                self._loading_since[address] = now
            return
        started = self._loading_since.pop(address, None)
        if new is Phase.WARM and old is Phase.LOADING and started is not None:
            self._recent.append(max(0.0, now - started))
            self.count += 1

    def loading_for(self, address: str, now: float) -> float | None:
        """How long ``address`` has been LOADING, None if it is not."""
        started = self._loading_since.get(address)
        return None if started is None else max(0.0, now - started)

    def measured(self) -> float | None:
        """Median of the recent cold starts, None before any."""
        return _quantile(self._recent, 0.5)

    def estimate(self, prior: float) -> float:
        """Median of the recent cold starts, ``prior`` until one is measured."""
        got = self.measured()
        return prior if got is None else got


@dataclass(frozen=True, slots=True)
class Decision:
    """What the pool should do for its queue now, and why (shown in /state and logs)."""

    scale_up: int  # replicas to add (0: wait for the warm ones)
    reason: str
    predicted_wait: float  # of the last waiter, on the capacity there is or is coming
    cold_start: float  # the estimate used
    at: float = 0.0  # when it was decided (the pool's clock)


@dataclass(frozen=True, slots=True)
class Supply:
    """One pool's capacity now, as slot timings (what ``decide`` needs, no more).

    ``slot_free_in`` has one entry per slot that is warm or coming: seconds until it may
    take a waiter (0: free now; a busy slot: its lease's expected remaining service; a
    loading replica's slot: what is left of its cold start).
    """

    waiting: int
    slot_free_in: tuple[float, ...]
    service: float | None  # learned mean service time; None before any request finished
    cold_start: float  # the estimate (measured median, or the prior)


class Forecast:
    """A pool's learned service and cold-start times and its last decision (written by
    the autoscaler through ``record``, read by ``/state``)."""

    __slots__ = ("cold", "last", "service")

    def __init__(self) -> None:
        self.service = ServiceStats()
        self.cold = ColdStarts()
        self.last: Decision | None = None

    def record(self, decision: Decision) -> None:
        self.last = decision

    def supply(
        self,
        replicas: Iterable[Replica],
        waiting: int,
        now: float,
        cold_prior: float,
        asked_slots: int = 0,
    ) -> Supply:
        """The slots of ``replicas`` (one pool's) as ``decide`` sees them at ``now``.

        Warm replicas: a free slot is free now; the pool's leases free after the learned
        mean service minus their age; other pools' leases and external load after one
        mean service. Loading replicas: their slots free when the cold-start estimate
        (``cold_prior`` until one is measured) is over. ``asked_slots``, the slots of
        replicas requested of the platform but not discovered yet, are a whole cold start
        away.
        """
        stats = self.service
        service = stats.mean if stats.count else None
        mean = service or 0.0
        cold = self.cold.estimate(cold_prior)
        free_in: list[float] = []
        for r in replicas:
            if r.phase is Phase.WARM:
                n = min(r.slots, r.capacity.slots)
                own = [max(0.0, mean - (now - lease.acquired_at)) for lease in r.leases.values()]
                others = max(0, r.busy - len(own))
                times = [0.0] * max(0, n - r.busy) + own + [mean] * others
                free_in.extend(times[:n])
            elif r.phase is Phase.LOADING:
                loading = self.cold.loading_for(r.address, now) or 0.0
                free_in.extend([max(0.0, cold - loading)] * r.slots)
        free_in.extend([cold] * max(0, asked_slots))
        return Supply(waiting, tuple(free_in), service, cold)

    def view(self) -> ForecastView:
        s, last = self.service, self.last
        return ForecastView(
            service_mean=s.mean if s.count else None,
            service_p50=s.quantile(0.5),
            service_p90=s.quantile(0.9),
            service_samples=s.count,
            cold_start=self.cold.measured(),
            cold_starts=self.cold.count,
            last_scale_up=None if last is None else last.scale_up,
            last_reason=None if last is None else last.reason,
            last_predicted_wait=(
                None if last is None or math.isinf(last.predicted_wait) else last.predicted_wait
            ),
            last_at=None if last is None else last.at,
        )


@dataclass(frozen=True, slots=True)
class ForecastView:
    """What a pool has learned, for ``/state`` (seconds; None: not measured yet)."""

    service_mean: float | None
    service_p50: float | None
    service_p90: float | None
    service_samples: int
    cold_start: float | None  # median of measured cold starts (the prior is config's)
    cold_starts: int
    last_scale_up: int | None  # the autoscaler's last decision, if it made one
    last_reason: str | None
    last_predicted_wait: float | None
    last_at: float | None


def predict_wait(
    position: int, warm_slots: int, busy_remaining: Sequence[float], service: float
) -> float:
    """Seconds until the waiter at ``position`` (1 = head of the queue) gets a slot.

    ``warm_slots`` slots serve the queue in order; ``busy_remaining`` holds, for each of
    them that is busy, the seconds until it frees (the others are free now). Every request
    is assumed to take ``service`` seconds: each freed slot takes the next waiter. Returns
    ``inf`` with no slot at all. Exact for fixed service times; with variable ones it is
    the wait at the mean, which is what the scale decision compares.
    """
    if position < 1:
        return 0.0
    if warm_slots < 1:
        return math.inf
    busy = sorted(max(0.0, r) for r in busy_remaining)[:warm_slots]
    free_at = [0.0] * (warm_slots - len(busy)) + busy
    return wait_on_slots(free_at, position, service)


def wait_on_slots(free_at: Iterable[float], position: int, service: float) -> float:
    """Seconds until the ``position``-th waiter (1 = head) starts, on slots that free at
    ``free_at`` and then take one waiter per ``service`` seconds each; ``inf`` with none."""
    heap = list(free_at)
    if not heap:
        return math.inf
    heapq.heapify(heap)
    service = max(0.0, service)
    if service == 0.0:
        return heap[0]
    for _ in range(position - 1):
        heapq.heapreplace(heap, heap[0] + service)
    return heap[0]


def decide(
    supply: Supply,
    *,
    queue_timeout: float,
    slots_per_replica: int,
    room: int,
) -> Decision:
    """Scale up only when a cold replica would serve the last waiter sooner, or when the
    last waiter would otherwise time out.

    The last waiter (position ``waiting``) starts after ``wait``, predicted over the slots
    there are or are coming. A replica started now takes ``cold_start`` before its first
    request, so it helps the last waiter iff ``wait > cold_start``; ``wait >
    queue_timeout`` scales up too (later waiters are helped, the pool is short). Replicas
    are added one at a time (``slots_per_replica`` slots each, free in ``cold_start``)
    while the last waiter's wait still exceeds the cold start, at most ``room`` (what the
    pool's max allows). Before any request has finished the service time is unknown, so
    every uncovered waiter gets a slot, like the ``every_wait`` mode.
    """
    cold = supply.cold_start
    n = supply.waiting
    slots = list(supply.slot_free_in)
    if n <= 0:
        return Decision(0, "no request waiting", 0.0, cold)
    if supply.service is None:
        uncovered = n - len(slots)
        add = min(room, math.ceil(uncovered / slots_per_replica)) if uncovered > 0 else 0
        return Decision(
            max(0, add),
            f"{n} waiting, {len(slots)} slots warm or coming, no service time measured yet: "
            "one slot per uncovered waiter",
            math.inf if not slots else wait_on_slots(slots, n, 0.0),
            cold,
        )
    service = supply.service
    wait = wait_on_slots(slots, n, service)
    facts = f"{n} waiting on {len(slots)} slots, mean service {service:.3g}s"
    if wait <= cold and wait <= queue_timeout:
        return Decision(
            0,
            f"wait warm: last waiter predicted {wait:.3g}s <= cold start {cold:.3g}s ({facts})",
            wait,
            cold,
        )
    why = (
        f"start cold: last waiter predicted {_s(wait)} > cold start {cold:.3g}s"
        if wait > cold
        else f"start cold: last waiter predicted {_s(wait)} > queue timeout {queue_timeout:g}s"
    )
    if room <= 0:
        add = 0
    else:
        # The fewest replicas (within room) that bring the last waiter within a cold
        # start; the wait only shrinks as replicas are added, so a binary search.
        def enough(k: int) -> bool:
            return wait_on_slots([*slots, *[cold] * (k * slots_per_replica)], n, service) <= cold

        lo, hi = 1, room
        while lo < hi:
            mid = (lo + hi) // 2
            if enough(mid):
                hi = mid
            else:
                lo = mid + 1
        add = lo
    if add == 0:
        return Decision(0, f"{why}, but the pool is at its max ({facts})", wait, cold)
    return Decision(add, f"{why} ({facts})", wait, cold)


def _s(seconds: float) -> str:
    return "never (no slot)" if math.isinf(seconds) else f"{seconds:.3g}s"


def _quantile(values: Iterable[float], q: float) -> float | None:
    got = sorted(values)
    if not got:
        return None
    # Nearest rank: a value that was observed, no interpolation between two workloads.
    return got[min(len(got) - 1, max(0, math.ceil(q * len(got)) - 1))]
