"""Unit tests of leadership: the election's config rules and the takeover fence.

The fence runs on a fake clock with a fake scheduler: no loop, no sleeps. The election
itself is tested against the test API server in tests/integration/test_leader_election.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from warmroute.config import LeaderElectionConfig
from warmroute.fence import Fence
from warmroute.state import Phase, PoolSpec, Registry, ReplicaExternalLoad, ReplicaUpsert
from warmroute.state.ask import Ask

R1, R2 = "10.0.0.1:8000", "10.0.0.2:8000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeTimer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        self.timers.append(FakeTimer(delay, callback))
        return self.timers[-1]

    def fire(self) -> None:
        """Run every timer not cancelled (as the loop would once their delay passed)."""
        for timer in self.timers:
            if not timer.cancelled:
                timer.callback()


class Setup:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.registry = Registry(clock=self.clock)
        self.registry.configure([PoolSpec("main", ("m",))])
        for address in (R1, R2):
            self.registry.apply(ReplicaUpsert("main", address, 2, Phase.WARM))
        self.scraped: dict[tuple[str, str], float] = {}
        self.schedule = FakeScheduler()
        self.fence = Fence(self.registry, schedule=self.schedule)

    def free(self, address: str) -> int:
        return self.registry.pools["main"].replicas[address].free

    def scrape(self, address: str, running: int) -> None:
        """What the scraper does: report the real load, stamped with the registry clock."""
        self.registry.apply(ReplicaExternalLoad("main", address, running, reconcile=True))
        self.scraped[("main", address)] = self.clock()


def test_fence_takes_every_slot_at_begin_and_lifts_after_the_grace() -> None:
    s = Setup()
    assert s.fence.begin("takeover", 30.0) == 2
    assert (s.free(R1), s.free(R2)) == (0, 0)
    assert [t.delay for t in s.schedule.timers] == [30.0]
    assert s.registry.pools["main"].try_acquire(Ask("r1")) is None  # nothing leasable
    s.clock.now += 30.0
    s.schedule.fire()
    assert (s.free(R1), s.free(R2)) == (2, 2)
    assert s.fence.fenced == ()


def test_a_scrape_after_begin_keeps_its_load_when_the_fence_lifts() -> None:
    s = Setup()
    s.scrape(R1, 0)  # before the fence: says nothing about the old leader's requests
    s.clock.now += 1.0
    s.fence.begin("takeover", 30.0)
    s.clock.now += 5.0
    s.scrape(R2, 1)  # the replica's own count: one request still runs on it
    assert s.free(R2) == 1
    s.clock.now += 25.0
    assert s.fence.lift() == 1  # only R1, whose last scrape predates the fence
    assert (s.free(R1), s.free(R2)) == (2, 1)


def test_cancel_stops_the_lift() -> None:
    s = Setup()
    s.fence.begin("takeover", 30.0)
    s.fence.cancel()
    s.fence.cancel()  # twice is fine
    assert s.schedule.timers[0].cancelled
    s.schedule.fire()
    assert (s.free(R1), s.free(R2)) == (0, 0)  # still fenced: the next leader decides


def test_a_second_begin_replaces_the_first() -> None:
    s = Setup()
    s.fence.begin("takeover", 30.0)
    s.clock.now += 10.0
    s.fence.begin("takeover", 30.0)
    assert [t.cancelled for t in s.schedule.timers] == [True, False]
    s.schedule.fire()
    assert (s.free(R1), s.free(R2)) == (2, 2)


def test_a_replica_removed_during_the_fence_is_skipped() -> None:
    s = Setup()
    s.fence.begin("takeover", 30.0)
    s.registry.configure([PoolSpec("other", ("o",))])
    s.registry.expire()  # the retired pool is idle: forgotten, its addresses with it
    assert s.fence.lift() == 0


# -- config ----------------------------------------------------------------------------


def test_defaults_follow_client_go_ratios() -> None:
    cfg = LeaderElectionConfig()
    assert (cfg.lease_seconds, cfg.renew_deadline, cfg.retry) == (15.0, 10.0, 2.0)
    assert cfg.request_timeout == cfg.renew_deadline
    short = LeaderElectionConfig(lease_seconds=1.0, renew_seconds=0.2)
    assert short.renew_deadline == pytest.approx(2 / 3)
    assert short.retry == 0.2


def test_explicit_keys_win() -> None:
    cfg = LeaderElectionConfig(
        lease_seconds=20, renew_seconds=3, renew_deadline_seconds=12, retry_seconds=1,
        request_timeout_seconds=4,
    )  # fmt: skip
    assert (cfg.renew_deadline, cfg.retry, cfg.request_timeout) == (12, 1, 4)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lease_seconds": 10, "renew_deadline_seconds": 10}, "must be below lease_seconds"),
        ({"lease_seconds": 10, "renew_deadline_seconds": 12}, "must be below lease_seconds"),
        ({"lease_seconds": 3}, "renew_seconds (5) must be below the renew deadline"),
        (
            {"lease_seconds": 15, "renew_seconds": 1, "retry_seconds": 10},
            "retry_seconds (10) must be below",
        ),
    ],
)
def test_a_deadline_that_allows_two_leaders_is_refused(
    keys: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LeaderElectionConfig.model_validate(keys)
