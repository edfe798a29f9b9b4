"""Leader election against the test API server, with the REAL kubernetes client.

Time is simulated: each elector's monotonic clock and sleeps run on a :class:`FakeTime`
the test moves forward, from one elector wake-up to the next, only once every elector is
settled (waiting on fake time, or on a request the server deliberately leaves hanging).
API calls run in real threads against the real server but take no fake time. At every
step the test checks the safety rule: never two leaders at once.

The lease record's renewTime is stamped from a per-elector wall clock (fake time plus an
offset), so writes can be dated in fake time and two hosts' clocks can disagree by 30 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.helpers import free_port, wait_for
from tests.kubeapi import KubeApiServer, api_client
from warmroute.config import LeaderElectionConfig
from warmroute.k8s.leader import LeaderElector

NS = "warmroute"
LEASE = "warmroute-leader"
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CFG = {
    "enabled": True, "namespace": NS, "lease_name": LEASE, "lease_seconds": 15,
    "renew_seconds": 5, "renew_deadline_seconds": 10, "retry_seconds": 2,
    "request_timeout_seconds": 5,
}  # fmt: skip


@dataclass
class _Sleeper:
    wake: float
    owner: str
    task: asyncio.Task[Any] | None
    future: asyncio.Future[None]


class FakeTime:
    """A clock that moves only when the test says; ``sleep`` waits on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[_Sleeper] = []

    def sleep_for(self, owner: str) -> Callable[[float], Any]:
        async def sleep(seconds: float) -> None:
            future = asyncio.get_running_loop().create_future()
            sleeper = _Sleeper(self.now + seconds, owner, asyncio.current_task(), future)
            self.sleepers.append(sleeper)
            try:
                await future
            finally:
                self.sleepers.remove(sleeper)

        return sleep

    def waiting(self) -> list[_Sleeper]:
        """Sleepers not woken yet (a woken one may not have run yet)."""
        return [s for s in self.sleepers if not s.future.done()]

    def advance_to(self, t: float) -> None:
        self.now = t
        for s in self.sleepers:
            if s.wake <= t and not s.future.done():
                s.future.set_result(None)


@dataclass
class Candidate:
    name: str
    api: k8s.ApiClient
    elector: LeaderElector
    task: asyncio.Task[None] | None = None
    changes: list[tuple[float, bool]] = field(default_factory=list)
    hung: bool = False  # its requests are left unanswered on purpose
    hanging_at_step_down: list[int] = field(default_factory=list)

    @property
    def leading(self) -> bool:
        return self.elector.is_leader


class Sim:
    def __init__(self, server: KubeApiServer) -> None:
        self.server = server
        self.time = FakeTime()
        self.candidates: list[Candidate] = []
        self.steps = 0

    def add(
        self, name: str, *, wall_offset: float = 0.0, mono_offset: float = 0.0, **cfg: Any
    ) -> Candidate:
        api = api_client(self.server.port, retries=0)
        config = LeaderElectionConfig.model_validate({**CFG, "identity": name, **cfg})
        t = self.time

        def wall() -> dt.datetime:
            return BASE + dt.timedelta(seconds=t.now + wall_offset)

        def on_change(leader: bool) -> None:
            c.changes.append((t.now, leader))
            if not leader:
                c.hanging_at_step_down.append(self.server.faults.hanging)

        elector = LeaderElector(
            api, config, on_change,
            clock=lambda: t.now + mono_offset, sleep=t.sleep_for(name), wall=wall,
        )  # fmt: skip
        c = Candidate(name, api, elector)
        self.candidates.append(c)
        return c

    def start(self, c: Candidate) -> None:
        c.task = asyncio.create_task(c.elector.run())

    async def stop(self, c: Candidate) -> None:
        """Cancel its run (it steps down and releases the lease) and wait for the end."""
        assert c.task is not None
        c.task.cancel()
        await wait_for(lambda: c.task is not None and c.task.done(), what=f"{c.name} stopped")
        c.task = None

    def _settled(self, c: Candidate) -> bool:
        if c.task is None or c.task.done():
            return True
        mine = [s for s in self.time.waiting() if s.owner == c.name]
        # Parked between rounds, or racing a request the server holds on purpose.
        parked = any(s.task is c.task for s in mine)
        return parked or (c.hung and bool(mine) and self.server.faults.hanging > 0)

    def check(self) -> None:
        leaders = [c.name for c in self.candidates if c.leading]
        assert len(leaders) <= 1, f"two leaders at t={self.time.now}: {leaders}"
        for c in self.candidates:  # what on_change said is what is_leader says, at rest
            told = c.changes[-1][1] if c.changes else False
            assert told == c.leading or c.task is None, (c.name, self.time.now, c.changes)

    async def run_until(self, t: float, until: Callable[[], bool] | None = None) -> None:
        """Step fake time to ``t`` (or until ``until()``), checking at every settled step."""
        while True:
            await wait_for(
                lambda: all(self._settled(c) for c in self.candidates),
                what=f"electors settled at t={self.time.now}",
            )
            for task in (c.task for c in self.candidates if c.task is not None):
                if task.done():
                    task.result()  # an elector crashed: show why
            self.check()
            self.steps += 1
            assert self.steps < 5000, f"time stuck at {self.time.now}"
            if until is not None and until():
                return
            wakes = [s.wake for s in self.time.waiting()]
            if not wakes or min(wakes) > t:
                self.time.advance_to(t)
                return
            self.time.advance_to(min(wakes))


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    server = KubeApiServer()
    await server.start()
    s = Sim(server)
    try:
        yield s
    finally:
        server.faults.clear()  # hung requests answer: their threads end
        for c in s.candidates:
            if c.task is not None:
                c.task.cancel()
        tasks = [c.task for c in s.candidates if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()
        for c in s.candidates:
            c.api.close()


def partition(c: Candidate) -> None:
    """Cut the candidate off the API server: its connections are refused."""
    c.api.configuration.host = f"http://127.0.0.1:{free_port()}"


def heal(c: Candidate, server: KubeApiServer) -> None:
    c.api.configuration.host = server.url


async def lease_record(server: KubeApiServer) -> Any:
    api = api_client(server.port)
    try:
        coord = k8s.CoordinationV1Api(api)
        return (await asyncio.to_thread(coord.read_namespaced_lease, LEASE, NS)).spec
    finally:
        api.close()


def written_at(spec: Any, wall_offset: float) -> float:
    """The fake time a holder with this wall-clock offset wrote the record's renewTime."""
    # Rounded: a whole-second stamp is written with 1 µs added (MicroTime needs a fraction).
    return round(float((spec.renew_time - BASE).total_seconds()) - wall_offset, 3)


def first(changes: list[tuple[float, bool]], leader: bool, after: float = -math.inf) -> float:
    return next(t for t, led in changes if led is leader and t >= after)


# -- clock skew ------------------------------------------------------------------------


@pytest.mark.parametrize("b_wall_offset", [30.0, -30.0], ids=["b-ahead", "b-behind"])
async def test_clocks_30s_apart_never_make_two_leaders(sim: Sim, b_wall_offset: float) -> None:
    a = sim.add("a")
    b = sim.add("b", wall_offset=b_wall_offset, mono_offset=1000.0)
    sim.start(a)
    await sim.run_until(1.0, until=lambda: a.leading)
    assert a.leading
    sim.start(b)
    # A renews on time. B, whose wall clock is 30 s off, must not judge A's renewTime by
    # it: B reads A's record change every 5 s, so the lease never looks expired.
    await sim.run_until(60.0)
    assert a.leading and not b.changes
    spec = await lease_record(sim.server)
    assert spec.holder_identity == "a"

    last = written_at(await lease_record(sim.server), 0.0)  # A's last write, fake time
    partition(a)  # A can no longer renew: it must stop before B may take over
    await sim.run_until(120.0)
    assert not a.leading and b.leading
    a_stopped, b_started = first(a.changes, False), first(b.changes, True)
    # A stopped within its renew deadline of its last write; B waited the lease duration.
    assert a_stopped <= last + 10.0 < last + 15.0 <= b_started

    heal(a, sim.server)  # A comes back as a standby: B keeps the lease
    await sim.run_until(180.0)
    assert b.leading and not a.leading
    assert a.changes[-1] == (a_stopped, False)
    spec = await lease_record(sim.server)
    assert spec.holder_identity == "b" and spec.lease_transitions == 1
    assert sim.steps > 50


async def test_a_standby_takes_over_only_after_seeing_no_change_for_the_lease_duration(
    sim: Sim,
) -> None:
    a = sim.add("a")
    b = sim.add("b", wall_offset=-30.0)
    sim.start(a)
    await sim.run_until(1.0, until=lambda: a.leading)
    sim.start(b)
    await sim.run_until(23.0)
    last = await lease_record(sim.server)
    partition(a)
    last_change = written_at(last, 0.0)  # A's last successful write, in fake time
    await sim.run_until(60.0, until=lambda: b.leading)
    assert b.leading
    took = first(b.changes, True)
    # B saw that write no earlier than it happened, and waited lease_seconds after seeing
    # it (polling every retry_seconds): never sooner.
    assert took >= last_change + 15.0
    assert took <= last_change + 15.0 + 2.0 + 2.0


async def test_candidates_starting_together_elect_exactly_one(sim: Sim) -> None:
    cs = [sim.add(f"c{i}", wall_offset=10.0 * i, mono_offset=100.0 * i) for i in range(3)]
    for c in cs:  # all read "no lease" and race to create it: one create wins, two get 409
        sim.start(c)
    await sim.run_until(60.0)
    assert [c.changes for c in cs if c.leading] == [[(0.0, True)]]
    assert sum(bool(c.changes) for c in cs) == 1


# -- a hung API server -----------------------------------------------------------------


async def test_a_hung_api_server_makes_the_leader_step_down_by_its_renew_deadline(
    sim: Sim,
) -> None:
    # The client's own timeout is far away (30 s of real time): only the elector's timer,
    # racing the stuck thread, can end leadership on time.
    a = sim.add("a", request_timeout_seconds=30)
    sim.start(a)
    await sim.run_until(12.0)
    assert a.leading
    renewed = written_at(await lease_record(sim.server), 0.0)
    sim.server.hang(resource="leases")
    a.hung = True
    deadline = renewed + 10.0
    await sim.run_until(deadline - 0.001)
    assert a.leading  # leads up to its deadline...
    await sim.run_until(deadline)
    assert not a.leading  # ...and not one step beyond
    assert a.changes[-1] == (deadline, False)  # told on time
    assert a.hanging_at_step_down[-1] >= 1  # while its request still hung in its thread
    await sim.run_until(40.0)
    assert [led for _, led in a.changes] == [True, False]

    sim.server.release_hangs()  # the server answers again: A still holds the record
    a.hung = False
    await sim.run_until(60.0)
    assert a.leading
    assert [led for _, led in a.changes] == [True, False, True]


# -- a flapping API server -------------------------------------------------------------


async def test_every_other_call_failing_does_not_unseat_a_healthy_leader(sim: Sim) -> None:
    a = sim.add("a")
    sim.start(a)
    await sim.run_until(1.0, until=lambda: a.leading)
    sim.server.faults.add_every(2, 503, resource="leases")
    await sim.run_until(120.0, until=lambda: not a.leading)
    assert a.leading and a.changes == [(0.0, True)]
    assert sim.server.faults.injected >= 10  # renewals really failed, and were retried


async def test_a_standby_under_a_flapping_server_waits_the_full_lease(sim: Sim) -> None:
    a = sim.add("a")
    b = sim.add("b", wall_offset=30.0)
    sim.start(a)
    await sim.run_until(1.0, until=lambda: a.leading)
    sim.start(b)
    sim.server.faults.add_every(2, 503, resource="leases", verb="update")
    await sim.run_until(60.0)
    assert a.leading and not b.changes
    last = await lease_record(sim.server)
    partition(a)
    await sim.run_until(120.0, until=lambda: b.leading)
    assert b.leading
    assert first(b.changes, True) >= written_at(last, 0.0) + 15.0
    assert first(a.changes, False) <= first(b.changes, True)


# -- release ---------------------------------------------------------------------------


async def test_a_released_lease_is_taken_over_at_once(sim: Sim) -> None:
    a = sim.add("a")
    b = sim.add("b", wall_offset=30.0)
    sim.start(a)
    await sim.run_until(1.0, until=lambda: a.leading)
    sim.start(b)
    await sim.run_until(30.0)
    await sim.stop(a)  # shutdown: steps down, then gives the lease up
    released = sim.time.now
    assert a.changes[-1] == (released, False)
    spec = await lease_record(sim.server)
    assert spec.holder_identity is None
    await sim.run_until(released + 15.0, until=lambda: b.leading)
    assert b.leading
    assert first(b.changes, True) <= released + 2.0  # its next poll, not the lease's expiry


async def test_in_real_time_a_hung_server_unseats_the_leader_while_its_call_hangs() -> None:
    """The production clock and sleep: the timer racing ``asyncio.to_thread`` decides, not
    the client's own timeout (60 s here, far beyond this test's waits)."""
    server = KubeApiServer()
    await server.start()
    api = api_client(server.port, retries=0)
    told: list[tuple[bool, int]] = []  # (leader, requests the server held unanswered then)
    cfg = LeaderElectionConfig.model_validate(
        {**CFG, "identity": "a", "lease_seconds": 3, "renew_seconds": 0.1,
         "renew_deadline_seconds": 1, "retry_seconds": 0.1, "request_timeout_seconds": 60}
    )  # fmt: skip
    elector = LeaderElector(api, cfg, lambda led: told.append((led, server.faults.hanging)))
    task = asyncio.create_task(elector.run())
    try:
        await wait_for(lambda: elector.is_leader, what="a leads")
        server.hang(resource="leases")
        await wait_for(lambda: server.faults.hanging > 0, what="a renewal hangs")
        await wait_for(lambda: len(told) == 2, what="a steps down")
        assert told[0][0] is True
        assert told[1][0] is False and told[1][1] >= 1  # its renewal still hung in its thread
        assert not elector.is_leader
    finally:
        server.release_hangs()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        api.close()
