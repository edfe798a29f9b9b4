"""Outlier detection: a replica whose requests fail stops getting leases for a while.

Exact leasing turns a fast-failing replica into a black hole (DESIGN.md fact 12): one that
answers 500 in a millisecond while its health probe stays green is free again first, so
the pool picks it again and again. Envoy's own outlier detection cannot help, because
``override_host`` sends each request to the host warmroute named, ejected or not. So the
pool judges its replicas by what their requests actually got.

Each finished request counts for its replica as one ``Outcome`` (``classify``; the access
log and the endpoint picker feed them in through ``Pool.report``):

* FAILURE: the replica answered 5xx (but 503), or Envoy could not reach it, it reset the
  stream, or the request timed out;
* FULL: the replica itself answered 503 or 429: it is busy, not broken;
* SUCCESS: any other answer from the replica (4xx included: it works);
* IGNORED: the client left first, or Envoy answered for reasons of its own (overflow, no
  route): nothing is learned about the replica.

Rules (``OutlierSpec`` holds the numbers; the README compares them with Envoy's):

* **Ejection.** A replica in service is ejected when its last ``consecutive_failures``
  counted outcomes (SUCCESS or FAILURE) are all failures, or when over the last
  ``window_seconds`` (kept in ten buckets, so to a tenth) it had at least
  ``failure_ratio_min_requests`` counted outcomes of which at least ``failure_ratio`` were
  failures. Ejected, it takes no new lease; requests already on it finish.
* **Ejection time** is ``base_ejection_seconds`` times the replica's ejections in a row,
  at most ``max_ejection_seconds`` (Envoy's ``base_ejection_time``/``max_ejection_time``).
  The count stops growing at the cap, and each ``base_ejection_seconds`` the replica
  serves after a return without being ejected takes one off it.
* **Return** happens when the ejection time is up (``restore``), and only then: a
  passing health probe does not shorten it, since the probe was green while the requests
  failed. A replica that is not WARM when it returns is still only leased once warm.
  After a return its counters start afresh.
* **The cap.** At most ``max_ejection_percent`` of the pool's WARM replicas (ejected ones
  included) are ejected at once, but at least one if the pool has two or more, and never
  all of them: a pool of one is never ejected, and when every replica fails, the rest
  keep serving (their clients get the replica's answer, not a refusal). A failure that
  would eject a replica beyond the cap is counted in ``capped``; the next failure tries
  again. ``restore`` also returns replicas early (soonest due first) when the pool's WARM
  replicas shrank under the cap.
* **Full back-off.** A FULL answer keeps the replica from new leases for
  ``full_backoff_seconds``, then it is picked again like any other. A FULL answer is
  neither a failure nor a success for ejection, and back-offs are not capped: a pool whose
  replicas all say they are full queues its requests until one is not.

``held`` is the set of addresses taking no new lease now (ejected or backed off); the
pool skips those replicas. Returns and back-off ends are *due* at ``next_due()``: the
adapter arms a timer for it and calls ``restore`` then, which frees the replicas (the
pool dispatches its waiters). Synchronous, no I/O; times come from the caller's clock.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_BUCKETS = 10  # the failure-ratio window, in buckets of window_seconds / 10


class Outcome(enum.Enum):
    """How one finished request counts for the replica that served it."""

    SUCCESS = "success"
    FAILURE = "failure"
    FULL = "full"
    IGNORED = "ignored"


def classify(
    status: int, *, answered: bool, upstream_failed: bool = False, client_gone: bool = False
) -> Outcome:
    """The outcome of a request whose client got ``status`` (0: no response).

    ``answered``: the replica itself sent that status (not Envoy on its behalf).
    ``upstream_failed``: Envoy saw the replica fail (connection refused, reset, timeout),
    answered or not (a stream reset half-way is a failure). ``client_gone``: the client
    left first, which says nothing about the replica.
    """
    if client_gone:
        return Outcome.IGNORED
    if upstream_failed:
        return Outcome.FAILURE
    if not answered:
        return Outcome.IGNORED
    if status == 503 or status == 429:
        return Outcome.FULL
    if status >= 500:
        return Outcome.FAILURE
    return Outcome.SUCCESS


@dataclass(frozen=True, slots=True)
class OutlierSpec:
    """A pool's outlier detection (``outlier_detection:`` in the config; README)."""

    enabled: bool = True
    consecutive_failures: int = 5  # 0: no consecutive-failure ejection
    failure_ratio: float | None = 0.5  # None: no failure-ratio ejection
    failure_ratio_min_requests: int = 20
    window_seconds: float = 30.0
    base_ejection_seconds: float = 10.0
    max_ejection_seconds: float = 300.0
    max_ejection_percent: int = 50
    full_backoff_seconds: float = 1.0  # 0: no back-off

    def allowed(self, warm: int) -> int:
        """How many of a pool's ``warm`` replicas may be ejected at once."""
        if warm < 2 or self.max_ejection_percent <= 0:
            return 0
        return min(warm - 1, max(1, warm * self.max_ejection_percent // 100))


DISABLED = OutlierSpec(enabled=False)


@dataclass(frozen=True, slots=True)
class Ejection:
    """A replica was ejected (``OutlierDetector.report``)."""

    pool: str
    address: str
    reason: str  # "consecutive_failures" or "failure_ratio"
    consecutive: int  # failures in a row when ejected
    failures: int  # failures in the window
    requests: int  # counted outcomes in the window
    count: int  # ejections in a row, this one included (the time's multiplier)
    seconds: float  # how long it is out
    ejected: int  # the pool's WARM replicas ejected now, this one included
    allowed: int  # the cap at that moment


@dataclass(frozen=True, slots=True)
class Backoff:
    """A replica answered that it is full and takes no lease for ``seconds``."""

    pool: str
    address: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Return:
    """An ejected replica is back in service (``OutlierDetector.restore``)."""

    pool: str
    address: str
    reason: str  # why it had been ejected
    consecutive: int  # what ejected it: failures in a row,
    failures: int  # failures in the window
    requests: int  # and counted outcomes in the window
    seconds: float  # how long it was out
    early: bool  # before its time: the cap shrank, or detection was turned off


@dataclass(frozen=True, slots=True)
class ReplicaOutlier:
    """One replica's outlier state, for ``/state`` (None when there is nothing to say)."""

    ejected: bool
    ejected_seconds_left: float
    ejection_reason: str
    ejections: int  # times ejected since it joined the pool
    ejections_in_a_row: int  # the multiplier of its next ejection time, before decay
    backoff_seconds_left: float
    consecutive_failures: int
    window_requests: int
    window_failures: int
    full_answers: int  # FULL outcomes since it joined the pool


class _Window:
    """Counted outcomes of roughly the last ``seconds``, in ``_BUCKETS`` buckets."""

    __slots__ = ("buckets", "failures", "requests", "width")

    def __init__(self, seconds: float) -> None:
        self.width = seconds / _BUCKETS
        self.buckets: deque[list[int]] = deque()  # [bucket index, requests, failures]
        self.requests = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        index = self._prune(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] == index:
            bucket = buckets[-1]
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self.requests += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, failures) in the window now."""
        self._prune(now)
        return self.requests, self.failures

    def _prune(self, now: float) -> int:
        index = math.floor(now / self.width)
        buckets = self.buckets
        while buckets and buckets[0][0] <= index - _BUCKETS:
            _, requests, failures = buckets.popleft()
            self.requests -= requests
            self.failures -= failures
        return index


class _Record:
    """One replica's counters and holds. Owned by its ``OutlierDetector``."""

    __slots__ = (
        "backoff_until", "consecutive", "ejected_at", "ejections", "evidence", "full",
        "in_a_row", "reason", "returned_at", "until", "window",
    )  # fmt: skip

    def __init__(self, window_seconds: float) -> None:
        self.consecutive = 0
        self.window = _Window(window_seconds)
        self.in_a_row = 0  # ejections in a row: the multiplier of the ejection time
        self.ejections = 0  # every ejection
        self.full = 0
        self.until: float | None = None  # ejected until then
        self.ejected_at = 0.0
        self.reason = ""
        self.evidence = (0, 0, 0)  # failures in a row, in the window, window requests
        self.returned_at: float | None = None
        self.backoff_until: float | None = None


class OutlierDetector:
    """One pool's outlier state: records by address, the ``held`` set, counters.

    ``warm()`` returns the addresses of the pool's WARM replicas (for the cap; called only
    when an ejection or a return is considered); ``clock`` is the pool's. Owned by its
    ``Pool``, which keeps its replicas' ``held`` flags in step with ``held``. Not
    thread-safe.
    """

    def __init__(
        self,
        pool: str,
        spec: OutlierSpec | None,
        warm: Callable[[], Iterable[str]],
        clock: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.spec = spec if spec is not None else DISABLED
        self._warm = warm
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._ejected: set[str] = set()
        self._pending: list[Return] = []  # returned by configure, told by the next restore
        self.held: set[str] = set()
        # Counters, read by views and metrics.
        self.ejections = 0
        self.capped = 0
        self.backoffs = 0

    def configure(self, spec: OutlierSpec | None) -> None:
        """Take a reloaded spec. Turned off, every replica returns at once and back-offs
        end (the next ``restore`` tells the returns and frees them); otherwise running
        ejections keep their end, and a new window length starts the windows afresh."""
        old, new = self.spec, spec if spec is not None else DISABLED
        self.spec = new
        if not new.enabled:
            now = self._clock()
            for address in list(self._ejected):
                self._pending.append(self._return(address, self._records[address], now, True))
            for record in self._records.values():
                if record.backoff_until is not None:
                    record.backoff_until = now
        elif new.window_seconds != old.window_seconds:
            for record in self._records.values():
                record.window = _Window(new.window_seconds)

    # -- outcomes ---------------------------------------------------------------------------

    def report(self, address: str, outcome: Outcome) -> Ejection | Backoff | None:
        """Count one finished request of the replica at ``address``. Returns the ejection
        or back-off it caused (the address is then in ``held``), else None."""
        spec = self.spec
        if not spec.enabled or outcome is Outcome.IGNORED:
            return None
        record = self._records.get(address)
        if record is None:
            record = self._records[address] = _Record(spec.window_seconds)
        if outcome is Outcome.SUCCESS:
            record.consecutive = 0
            if spec.failure_ratio is not None:
                record.window.add(self._clock(), False)
            return None
        now = self._clock()
        if outcome is Outcome.FULL:
            return self._back_off(record, address, now)
        record.consecutive += 1
        if spec.failure_ratio is not None:
            record.window.add(now, True)
        if record.until is not None:
            return None  # already ejected: a request it had when ejected failed too
        return self._judge(record, address, now)

    def _back_off(self, record: _Record, address: str, now: float) -> Backoff | None:
        record.full += 1
        seconds = self.spec.full_backoff_seconds
        if seconds <= 0:
            return None
        record.backoff_until = now + seconds
        self.held.add(address)
        self.backoffs += 1
        return Backoff(self.pool, address, seconds)

    def _judge(self, record: _Record, address: str, now: float) -> Ejection | None:
        spec = self.spec
        requests, failures = 0, 0
        if spec.failure_ratio is not None:
            requests, failures = record.window.counts(now)
        if 0 < spec.consecutive_failures <= record.consecutive:
            reason = "consecutive_failures"
        elif (
            spec.failure_ratio is not None
            and requests >= spec.failure_ratio_min_requests
            and failures >= spec.failure_ratio * requests
        ):
            reason = "failure_ratio"
        else:
            return None
        warm = list(self._warm())
        if address not in warm:
            return None  # not in service anyway (loading, draining, gone)
        allowed = spec.allowed(len(warm))
        ejected = sum(1 for a in warm if a in self._ejected)
        if ejected >= allowed:
            self.capped += 1
            return None
        # Forgive one step of the multiplier per base time served since the last return.
        base = spec.base_ejection_seconds
        in_a_row = record.in_a_row
        if record.returned_at is not None:
            in_a_row = max(0, in_a_row - math.floor((now - record.returned_at) / base))
        steps = max(1, math.ceil(spec.max_ejection_seconds / base))  # where the time stops
        record.in_a_row = in_a_row = min(in_a_row + 1, steps)
        seconds = min(base * record.in_a_row, spec.max_ejection_seconds)
        record.until = now + seconds
        record.ejected_at = now
        record.reason = reason
        record.evidence = (record.consecutive, failures, requests)
        record.ejections += 1
        self.ejections += 1
        self._ejected.add(address)
        self.held.add(address)
        return Ejection(
            self.pool, address, reason, record.consecutive, failures, requests,
            record.in_a_row, seconds, ejected + 1, allowed,
        )  # fmt: skip

    # -- time -------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next ejection or back-off ends (None: nothing held). In the past when
        ``restore`` has something to do now."""
        due: float | None = None
        for address in self.held:
            record = self._records[address]
            for end in (record.until, record.backoff_until):
                if end is not None and (due is None or end < due):
                    due = end
        if self._pending:
            due = -math.inf
        return due

    def restore(self) -> tuple[list[Return], list[str]]:
        """End the ejections and back-offs due now, and return early the ejected replicas
        beyond the cap of the pool's WARM replicas now (soonest due first). Returns the
        ejections ended and the addresses no longer held (the pool dispatches to them)."""
        returns, self._pending = self._pending, []
        if not self.held:
            return returns, []
        now = self._clock()
        for address in list(self._ejected):
            record = self._records[address]
            if record.until is not None and record.until <= now:
                returns.append(self._return(address, record, now, False))
        if self._ejected:
            warm = list(self._warm())
            ejected = [a for a in warm if a in self._ejected]
            over = len(ejected) - self.spec.allowed(len(warm))
            if over > 0:
                ejected.sort(key=lambda a: self._records[a].until or 0.0)
                for address in ejected[:over]:
                    returns.append(self._return(address, self._records[address], now, True))
        freed: list[str] = []
        for address in list(self.held):
            record = self._records[address]
            if record.backoff_until is not None and record.backoff_until <= now:
                record.backoff_until = None
            if record.until is None and record.backoff_until is None:
                self.held.discard(address)
                freed.append(address)
        return returns, freed

    def _return(self, address: str, record: _Record, now: float, early: bool) -> Return:
        seconds = max(0.0, now - record.ejected_at)
        record.until = None
        record.returned_at = now
        record.consecutive = 0
        record.window = _Window(self.spec.window_seconds)
        self._ejected.discard(address)
        return Return(self.pool, address, record.reason, *record.evidence, seconds, early)

    # -- membership and reads -----------------------------------------------------------------

    def forget(self, address: str) -> None:
        """The replica left the pool: drop its record (silently, ejected or not)."""
        self._records.pop(address, None)
        self._ejected.discard(address)
        self.held.discard(address)

    def ejected(self) -> frozenset[str]:
        """The addresses ejected now."""
        return frozenset(self._ejected)

    def status(self, address: str) -> ReplicaOutlier | None:
        """The replica's state for views; None if it has no record yet."""
        record = self._records.get(address)
        if record is None:
            return None
        now = self._clock()
        requests, failures = record.window.counts(now)
        until, backoff = record.until, record.backoff_until
        return ReplicaOutlier(
            ejected=until is not None,
            ejected_seconds_left=max(0.0, until - now) if until is not None else 0.0,
            ejection_reason=record.reason if until is not None else "",
            ejections=record.ejections,
            ejections_in_a_row=record.in_a_row,
            backoff_seconds_left=max(0.0, backoff - now) if backoff is not None else 0.0,
            consecutive_failures=record.consecutive,
            window_requests=requests,
            window_failures=failures,
            full_answers=record.full,
        )
