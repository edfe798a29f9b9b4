"""Leader election on a ``coordination.k8s.io/v1`` Lease, following client-go's rules.

No host ever compares its clock with another host's: the ``renewTime`` written in the
record is for humans only. The rules, each timed on this process's monotonic clock:

* **Observed time.** A candidate remembers when it last saw the record *change* (any new
  resourceVersion or field). It takes the lease only once it has seen no change for the
  record's ``leaseDurationSeconds``, or at once if the record has no holder (released).
* **Renew deadline.** The leader leads until ``renew_deadline`` after the start of its last
  successful renewal, then stops by itself: the decision is a timer racing each API call,
  so a call hung in its thread cannot keep ``is_leader`` true. ``renew_deadline`` is below
  the lease duration, and a candidate's observed time is later than the write it saw,
  which was later than the start of the leader's call: the old leader has stopped before
  any candidate may take over (with clocks that tick at the same rate, not the same time).
* **Retry period.** A failed call is retried after ``retry`` seconds until the deadline;
  candidates poll that often.
* **Optimistic concurrency.** Every write carries the resourceVersion it read or last
  wrote, so of two writers racing for the record exactly one wins (the other gets 409).

Every call runs in a worker thread with the client's ``_request_timeout``; at most one
thread per elector at a time (a call abandoned at its deadline is waited for before the
next one starts, so a hung server cannot pile threads up). ``on_change(is_leader)`` runs
on the event loop at each transition; ``is_leader`` is read on the loop too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from warmroute.config import LeaderElectionConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Wall = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    # The API server requires MicroTime's six fraction digits (isoformat() drops them at 0).
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _record(lease: Any) -> tuple[Any, ...]:
    """What makes a record "changed" for a candidate: any new version or field."""
    spec = lease.spec
    return (
        lease.metadata.resource_version, spec.holder_identity, _parse(spec.renew_time),
        _parse(spec.acquire_time), spec.lease_duration_seconds, spec.lease_transitions,
    )  # fmt: skip


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class CallTimeout(Exception):
    """An API call did not answer within its time limit (it may still land later)."""


class LeaderElector:
    """Campaigns for, holds and releases one Lease. Not safe across event loops.

    ``clock`` is monotonic (seconds) and ``sleep`` waits on it; ``wall`` only stamps the
    record's acquireTime/renewTime for people reading it.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        cfg: LeaderElectionConfig,
        on_change: Callable[[bool], None],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall: Wall = utc_now,
    ) -> None:
        self._api = k8s.CoordinationV1Api(api)
        self._cfg = cfg
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self.identity = cfg.identity or f"{socket.gethostname()}-{os.getpid()}"
        self._deadline: float | None = None  # leading until then unless renewed
        self._told = False  # what on_change last said
        self._lease: Any = None  # the record as last read or written (for renewing)
        self._seen: tuple[Any, ...] | None = None  # the record last seen to change...
        self._seen_at = 0.0  # ...and when (our clock)
        self._pending: asyncio.Task[Any] | None = None  # an abandoned call still in its thread

    @property
    def is_leader(self) -> bool:
        """True until the renew deadline, whether or not the loop has run since."""
        return self._deadline is not None and self._clock() < self._deadline

    async def run(self) -> None:
        """Campaign and lead until cancelled; then step down and release the lease."""
        try:
            while True:
                self._sync()
                started = self._clock()
                renewed = False
                try:
                    renewed = await self._attempt()
                    if renewed:
                        self._deadline = started + self._cfg.renew_deadline
                    else:
                        self._deadline = None  # another holder: not (or no longer) us
                except Exception as exc:  # a failed call: retry until the deadline
                    logger.warning(
                        "leader election %s/%s (%s, %s): %s: %s",
                        self._cfg.namespace, self._cfg.lease_name, self.identity,
                        "leading" if self.is_leader else "standby", type(exc).__name__, exc,
                    )  # fmt: skip
                self._sync()
                wait = self._cfg.renew_seconds if renewed else self._cfg.retry
                if self._deadline is not None:
                    wait = min(wait, self._deadline - self._clock())
                await self._sleep(max(wait, 0.0))
        finally:
            # Release if the record still names us, even past our deadline: a standby then
            # need not wait out the lease.
            held = self._deadline is not None or (
                self._lease is not None and self._lease.spec.holder_identity == self.identity
            )
            self._deadline = None
            self._sync()  # stop leading before giving the lease away
            if held:
                try:
                    await self._call(self._release)
                except Exception as exc:  # shutting down: the lease will expire anyway
                    logger.warning("could not release lease %s: %s", self._cfg.lease_name, exc)

    def _sync(self) -> None:
        leader = self.is_leader
        if not leader:
            self._deadline = None
        if leader != self._told:
            self._told = leader
            logger.info(
                "%s %s leadership of lease %s/%s", self.identity,
                "acquired" if leader else "lost", self._cfg.namespace, self._cfg.lease_name,
            )  # fmt: skip
            self._on_change(leader)

    # -- one round: True if we hold the lease through a write started this round ----------

    async def _attempt(self) -> bool:
        if self.is_leader and self._lease is not None:
            # Fast path: renew the record we last saw, no read. A 409 means someone wrote
            # since; read and decide.
            try:
                return self._saw(await self._call(partial(self._replace, self._lease, True)))
            except Exception as exc:  # e.g. 409, a timeout, a refused connection
                logger.debug("renewing %s optimistically failed: %s", self._cfg.lease_name, exc)
                self._lease = None
        lease = await self._call(self._read)
        if lease is None:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self._cfg.lease_name, namespace=self._cfg.namespace),
                spec=k8s.V1LeaseSpec(),
            )
            return await self._write(partial(self._create, body))
        self._saw(lease)
        holder = lease.spec.holder_identity
        duration = lease.spec.lease_duration_seconds or self._cfg.lease_seconds
        if holder and holder != self.identity and self._clock() < self._seen_at + duration:
            return False  # held, and changed within its duration: the holder is alive
        if holder and holder != self.identity:
            logger.info(
                "%s: lease %s unchanged for %gs since seen, taking it from %s",
                self.identity, self._cfg.lease_name, self._clock() - self._seen_at, holder,
            )  # fmt: skip
        return await self._write(partial(self._replace, lease, holder == self.identity))

    async def _write(self, fn: Callable[[], Any]) -> bool:
        try:
            return self._saw(await self._call(fn))
        except ApiException as exc:
            if exc.status == 409 and not self.is_leader:
                return False  # another candidate wrote first: it won this round
            raise  # a leader retries until its deadline

    def _saw(self, lease: Any) -> bool:
        """Remember ``lease`` (read or just written); True if we hold it."""
        self._lease = lease
        record = _record(lease)
        if record != self._seen:
            self._seen, self._seen_at = record, self._clock()
        return bool(lease.spec.holder_identity == self.identity)

    # -- calls: off the loop, raced against a timer on our clock --------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread, within the request timeout and, while leading,
        before the renew deadline; raises CallTimeout (the thread may still be running)."""
        self._sync()  # a deadline passed during the previous call: say so before this one
        limit = self._cfg.request_timeout
        if self._deadline is not None:
            limit = min(limit, self._deadline - self._clock())
        end = self._clock() + limit
        if self._pending is not None:  # one thread at a time: wait out the abandoned call
            await self._wait(self._pending, end)
            if not self._pending.done():
                raise CallTimeout(f"an earlier call of {self.identity} still has no answer")
            self._pending = None  # its result no longer matters
        task: asyncio.Task[T] = asyncio.ensure_future(asyncio.to_thread(fn))
        task.add_done_callback(_retrieve)  # an abandoned call's error is not an error
        self._pending = task
        await self._wait(task, end)
        if not task.done():
            raise CallTimeout(f"no answer to {self.identity} within the time limit")
        self._pending = None
        return task.result()

    async def _wait(self, task: asyncio.Task[Any], end: float) -> None:
        """Until ``task`` is done or our clock reaches ``end``, whichever comes first."""
        if task.done():
            return
        timer = asyncio.ensure_future(self._sleep(max(end - self._clock(), 0.0)))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    # -- the API calls (worker threads: they touch no elector state) ----------------------

    def _timeout(self) -> float:
        return self._cfg.request_timeout

    def _read(self) -> Any:
        try:
            return self._api.read_namespaced_lease(
                self._cfg.lease_name, self._cfg.namespace, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, lease: Any) -> Any:
        lease.spec = self._spec(None, renewing=False)
        return self._api.create_namespaced_lease(
            self._cfg.namespace, lease, _request_timeout=self._timeout()
        )

    def _replace(self, lease: Any, renewing: bool) -> Any:
        """Write ``lease`` as held by us; its resourceVersion makes a stale write a 409."""
        body = k8s.V1Lease(metadata=lease.metadata, spec=self._spec(lease.spec, renewing=renewing))
        return self._api.replace_namespaced_lease(
            self._cfg.lease_name, self._cfg.namespace, body, _request_timeout=self._timeout()
        )

    def _spec(self, old: Any, *, renewing: bool) -> Any:
        now = self._wall()
        previous = _parse(old.renew_time) if old is not None else None
        if previous is not None and _fmt(previous) == _fmt(now):
            # A write identical to the last would not change the record: candidates would
            # see no sign of life. Never write the same renewTime twice.
            now = previous + dt.timedelta(microseconds=1)
        if now.microsecond == 0:
            now = now.replace(microsecond=1)
        transitions = (old.lease_transitions or 0) if old is not None else 0
        acquired = _parse(old.acquire_time) if old is not None and renewing else None
        if old is not None and not renewing:
            transitions += 1  # a new holder, as client-go counts (a released lease too)
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            # Whole seconds, rounded up: never shorter than our renew deadline assumes.
            lease_duration_seconds=math.ceil(self._cfg.lease_seconds),
            acquire_time=_fmt(acquired or now),
            renew_time=_fmt(now),
            lease_transitions=transitions,
        )

    def _release(self) -> None:
        """Give the lease up so a standby takes over at its next poll, not after expiry."""
        lease = self._read()
        if lease is not None and lease.spec.holder_identity == self.identity:
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            lease.spec.acquire_time = _fmt(_parse(lease.spec.acquire_time) or self._wall())
            self._api.replace_namespaced_lease(
                self._cfg.lease_name, self._cfg.namespace, lease, _request_timeout=self._timeout()
            )
