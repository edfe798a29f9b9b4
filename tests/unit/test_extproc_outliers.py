"""The outlier adapter (``warmroute.director.outliers``): one log line per ejection and per
return, the counters, and one timer armed for the next return. Fake clock and timers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from tests.e2e.stack import metric_total
from tests.unit.test_state_outlier import A, B, C, Ids, _lease_on
from tests.unit.test_state_pool import FakeClock
from warmroute.director.outliers import OutlierReporter
from warmroute.extproc.accesslog import _for_replica
from warmroute.metrics import Metrics
from warmroute.state import Phase, PoolSpec, Registry, ReplicaUpsert
from warmroute.state.outlier import Outcome, OutlierSpec

LOGGER = "warmroute.director.outliers"


class FakeTimers:
    """``schedule`` for the reporter: records what it armed; ``fire`` runs the latest."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.armed: list[tuple[float, Callable[[], None], list[bool]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> _Handle:
        cancelled = [False]
        self.armed.append((self.clock.now + delay, callback, cancelled))
        return _Handle(cancelled)

    def live(self) -> list[float]:
        return [when for when, _, cancelled in self.armed if not cancelled[0]]

    def fire(self) -> None:
        """Move the clock to the earliest live timer and run it."""
        when, callback, cancelled = min((t for t in self.armed if not t[2][0]), key=lambda t: t[0])
        cancelled[0] = True
        self.clock.now = when
        callback()


class _Handle:
    def __init__(self, cancelled: list[bool]) -> None:
        self._cancelled = cancelled

    def cancel(self) -> None:
        self._cancelled[0] = True


class _Plane:
    """Just enough of a control plane for ``metric_total``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics


def _setup() -> tuple[Registry, OutlierReporter, FakeTimers, Metrics, FakeClock]:
    clock = FakeClock(50.0)
    registry = Registry(clock=clock, new_id=Ids())
    spec = OutlierSpec(failure_ratio=None, base_ejection_seconds=4.0, full_backoff_seconds=1.0)
    registry.configure([PoolSpec("p", ("m",), outlier=spec)])
    for address in (A, B, C):
        registry.apply(ReplicaUpsert("p", address, 2, Phase.WARM))
    metrics = Metrics(registry.view)
    timers = FakeTimers(clock)
    return registry, OutlierReporter(registry, metrics, schedule=timers), timers, metrics, clock


def _fail(registry: Registry, reporter: OutlierReporter, address: str, n: int) -> None:
    pool = registry.pools["p"]
    for i in range(n):
        lease = _lease_on(pool, address, f"{address}-{i}")
        reporter.report(lease, Outcome.FAILURE)
        lease.release()


def test_one_line_per_ejection_and_per_return_and_a_timer_for_the_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, reporter, timers, metrics, clock = _setup()
    caplog.set_level(logging.INFO, logger=LOGGER)
    pool = registry.pools["p"]
    _fail(registry, reporter, A, 4)
    lease = _lease_on(pool, A, "in-flight")  # still running when A is ejected
    _fail(registry, reporter, A, 1)
    reporter.report(lease, Outcome.FAILURE)  # it fails too: no second ejection, no line
    lease.release()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    assert lines[0].startswith(f"replica {A} of pool p ejected for 4.0s: consecutive_failures")
    assert "5 failures in a row" in lines[0]
    assert timers.live() == [54.0]
    plane = _Plane(metrics)
    assert metric_total(plane, "warmroute_replica_ejections_total", replica=A) == 1  # type: ignore[arg-type]
    assert metric_total(plane, "warmroute_replica_ejected", replica=A) == 1  # type: ignore[arg-type]
    assert metric_total(plane, "warmroute_replica_ejected", replica=B) == 0  # type: ignore[arg-type]
    caplog.clear()
    timers.fire()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1
    assert lines[0].startswith(f"replica {A} of pool p back in service after 4.0s ejected")
    assert timers.live() == []
    assert metric_total(plane, "warmroute_replica_ejected", replica=A) == 0  # type: ignore[arg-type]
    assert clock.now == 54.0


def test_the_timer_follows_the_earliest_due_moment() -> None:
    registry, reporter, timers, _, clock = _setup()
    _fail(registry, reporter, A, 5)  # due at 54
    assert timers.live() == [54.0]
    pool = registry.pools["p"]
    lease = _lease_on(pool, B)
    reporter.report(lease, Outcome.FULL)  # B backed off until 51: an earlier moment
    lease.release()
    assert timers.live() == [51.0]
    timers.fire()  # B back at 51, silently; the timer moves on to A
    assert timers.live() == [54.0]
    assert not pool.replicas[B].held and pool.replicas[A].held
    timers.fire()
    assert timers.live() == [] and not pool.replicas[A].held
    assert clock.now == 54.0


def test_full_answers_are_counted_and_not_ejections(caplog: pytest.LogCaptureFixture) -> None:
    registry, reporter, timers, metrics, _ = _setup()
    caplog.set_level(logging.INFO, logger=LOGGER)
    pool = registry.pools["p"]
    for _ in range(6):
        lease = _lease_on(pool, C)
        reporter.report(lease, Outcome.FULL)
        lease.release()
        assert pool.replicas[C].held
        timers.fire()  # its back-off ends
    plane = _Plane(metrics)
    assert metric_total(plane, "warmroute_replica_full_answers_total", replica=C) == 6  # type: ignore[arg-type]
    assert metric_total(plane, "warmroute_replica_ejections_total") == 0  # type: ignore[arg-type]
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_close_cancels_the_timer() -> None:
    registry, reporter, timers, _, _ = _setup()
    _fail(registry, reporter, A, 5)
    reporter.close()
    reporter.close()
    assert timers.live() == []


@pytest.mark.parametrize(
    ("code", "details", "flags", "expected"),
    [
        (200, "via_upstream", {}, Outcome.SUCCESS),
        (500, "via_upstream", {}, Outcome.FAILURE),
        (503, "via_upstream", {}, Outcome.FULL),  # the replica's own "full"
        (429, "via_upstream", {}, Outcome.FULL),
        # Measured with Envoy 1.40: a refused connection is Envoy's own 503.
        (
            503,
            "upstream_reset_before_response_started{remote_connection_failure|"
            "delayed_connect_error:_Connection_refused}",
            {"upstream_connection_failure": True},
            Outcome.FAILURE,
        ),
        (504, "upstream_response_timeout", {"upstream_request_timeout": True}, Outcome.FAILURE),
        (200, "via_upstream", {"upstream_remote_reset": True}, Outcome.FAILURE),  # mid-stream
        (503, "upstream_reset_before_response_started{overflow}", {"upstream_overflow": True},
         Outcome.IGNORED),  # Envoy's circuit breaker, not the replica
        (0, "downstream_remote_disconnect", {"downstream_remote_reset": True}, Outcome.IGNORED),
        (200, "via_upstream", {"downstream_connection_termination": True}, Outcome.IGNORED),
    ],
)  # fmt: skip
def test_an_access_log_entry_counts_for_its_replica(
    code: int, details: str, flags: dict[str, bool], expected: Outcome
) -> None:
    assert _for_replica(code, details, accesslog_pb2.ResponseFlags(**flags)) is expected
