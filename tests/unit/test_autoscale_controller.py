"""Unit tests of the autoscaling controller: a real Registry, a fake clock, a fake Scaler.

What ``warmroute/autoscale/controller.py`` promises: queued demand asks for replicas at
once, counting capacity already on its way (loading, or asked for and not yet
discovered) so that waiting for the platform never asks twice; scale-ups are rate-limited;
an idle pool shrinks to ``min_replicas`` after ``idle_seconds``, marking deletion costs
first; a server busy with any pool's requests is not idle; bounds hold; a failing platform
call is logged and retried; a poke decides at once, without waiting for the tick.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.helpers import wait_for
from warmroute.autoscale.controller import Autoscaler, deletion_costs
from warmroute.config import Config, PoolConfig
from warmroute.state import (
    Lease,
    Phase,
    PoolLoad,
    Registry,
    ReplicaExternalLoad,
    ReplicaLoad,
    ReplicaUpsert,
    Waiter,
)
from warmroute.state.ask import Ask

POOL = "main"
R1, R2, R3 = (f"10.0.0.{i}:8000" for i in (1, 2, 3))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeScaler:
    """Records every call in order; ``set_replicas`` may fail or block on demand."""

    def __init__(self, replicas: dict[str, int] | None = None) -> None:
        self.replicas = dict(replicas or {})
        self.calls: list[tuple[Any, ...]] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None  # set_replicas waits for it when given

    async def get_replicas(self, pool: PoolConfig) -> int:
        self.calls.append(("get", pool.name))
        return self.replicas.get(pool.name, 0)

    async def set_replicas(self, pool: PoolConfig, replicas: int) -> None:
        self.calls.append(("set", pool.name, replicas))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the platform said no")
        self.replicas[pool.name] = replicas

    async def mark_deletion_costs(self, pool: PoolConfig, costs: dict[str, int]) -> None:
        self.calls.append(("costs", pool.name, costs))

    def sets(self) -> list[int]:
        return [c[2] for c in self.calls if c[0] == "set"]


class Env:
    def __init__(self, scaler: FakeScaler, *pools: dict[str, Any], tick: float = 1.0) -> None:
        self.cfg = Config.model_validate({"pools": list(pools)})
        self.clock = FakeClock()
        self.registry = Registry(clock=self.clock)
        self.registry.configure(self.cfg.specs())
        self.scaler = scaler
        self.scaled: list[tuple[str, int, int, str]] = []
        self.autoscaler = Autoscaler(
            self.registry,
            scaler,
            self.cfg,
            clock=self.clock,
            tick_seconds=tick,
            on_scale=lambda *event: self.scaled.append(event),
        )

    def replica(self, address: str, phase: Phase = Phase.WARM, pool: str = POOL) -> None:
        slots = next(p.slots for p in self.cfg.pools if p.name == pool)
        self.registry.apply(ReplicaUpsert(pool, address, slots, phase))

    def wait(self, n: int, pool: str = POOL) -> list[Waiter]:
        p = self.registry.pools[pool]
        return [p.enqueue(Ask(f"w{i}"), lambda _lease: True) for i in range(n)]

    def lease(self, pool: str = POOL) -> Lease:
        got = self.registry.pools[pool].try_acquire(Ask("r"))
        assert got is not None
        return got


def pool(
    name: str = POOL,
    *,
    slots: int = 1,
    min_replicas: int = 0,
    max_replicas: int = 4,
    idle_seconds: float = 60.0,
    interval: float = 0.0,
    autoscale: bool = True,
) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "models": [f"model-{name}"], "slots": slots}
    if autoscale:
        p["autoscale"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "idle_seconds": idle_seconds,
            "scale_up_interval_seconds": interval,
        }
    return p


async def started(scaler: FakeScaler, *pools: dict[str, Any], tick: float = 1.0) -> Env:
    env = Env(scaler, *(pools or (pool(),)), tick=tick)
    await env.autoscaler.start()
    return env


# -- scaling up ------------------------------------------------------------------------------


async def test_start_asks_the_platform_only_about_autoscaled_pools() -> None:
    scaler = FakeScaler({POOL: 2})
    env = await started(scaler, pool(), pool("fixed", autoscale=False))
    assert scaler.calls == [("get", POOL)]
    env.wait(3, "fixed")
    await env.autoscaler.step()
    assert scaler.sets() == []  # the fixed pool's queue asks for nothing


@pytest.mark.parametrize(
    ("slots", "waiting", "expected"),
    [
        pytest.param(1, 1, 1, id="one-request-at-zero-asks-one-replica"),
        pytest.param(1, 3, 3, id="one-replica-per-uncovered-waiter"),
        pytest.param(2, 3, 2, id="multi-slot-replicas-round-up"),
        pytest.param(1, 9, 4, id="capped-at-max"),
    ],
)
async def test_queued_requests_scale_up_at_once(slots: int, waiting: int, expected: int) -> None:
    scaler = FakeScaler()
    env = await started(scaler, pool(slots=slots))
    env.wait(waiting)
    await env.autoscaler.step()
    assert scaler.sets() == [expected]
    assert env.scaled == [(POOL, 0, expected, f"{waiting} waiting, 0 slots loading")]


async def test_waiting_for_the_platform_asks_nothing_more() -> None:
    scaler = FakeScaler()
    env = await started(scaler)
    env.wait(2)
    await env.autoscaler.step()
    assert scaler.sets() == [2]
    # Asked for, not yet discovered: it covers the same waiters.
    await env.autoscaler.step()
    env.replica(R1, Phase.LOADING)
    env.replica(R2, Phase.LOADING)
    await env.autoscaler.step()  # discovered, loading: still covering them
    assert scaler.sets() == [2]
    env.wait(1)  # a third waiter nothing covers
    await env.autoscaler.step()
    assert scaler.sets() == [2, 3]


async def test_decisions_run_one_at_a_time_while_the_platform_answers() -> None:
    """Pokes during a slow scale-up fold into the next decision, which sees the new target."""
    scaler = FakeScaler()
    scaler.gate = asyncio.Event()
    env = await started(scaler, tick=3600.0)  # only pokes wake it
    task = asyncio.create_task(env.autoscaler.run())
    try:
        await wait_for(lambda: ("get", POOL) in scaler.calls, what="start")
        env.wait(1)
        env.autoscaler.poke(POOL)
        await wait_for(lambda: scaler.sets() == [1], what="the first scale-up")
        for _ in range(5):
            env.autoscaler.poke(POOL)
            await asyncio.sleep(0)  # let the loop run: it is blocked in set_replicas
        assert scaler.sets() == [1]
        scaler.gate.set()
        await wait_for(lambda: env.scaled != [], what="the scale-up to finish")
        # The folded pokes were decided with target 1, which covers the one waiter.
        env.autoscaler.poke(POOL)
        env.wait(1)
        env.autoscaler.poke(POOL)
        await wait_for(lambda: len(scaler.sets()) == 2, what="the second scale-up")
        assert scaler.sets() == [1, 2]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_scale_ups_are_rate_limited_per_pool() -> None:
    scaler = FakeScaler()
    env = await started(scaler, pool(interval=10.0), pool("other", interval=10.0))
    env.wait(1)
    env.wait(1, "other")
    await env.autoscaler.step()
    assert scaler.sets() == [1, 1]
    env.clock.now = 9.0
    env.wait(1)  # uncovered, but too soon after the last scale-up
    await env.autoscaler.step()
    assert scaler.sets() == [1, 1]
    env.clock.now = 10.0
    await env.autoscaler.step()
    assert scaler.sets() == [1, 1, 2]
    assert env.scaled[-1][:3] == (POOL, 1, 2)


# -- scaling down ----------------------------------------------------------------------------


async def test_an_idle_pool_scales_down_to_min_marking_deletion_costs_first() -> None:
    scaler = FakeScaler({POOL: 3})
    env = await started(scaler, pool(min_replicas=1))
    for address in (R1, R2, R3):
        env.replica(address)
    env.clock.now = 59.0
    await env.autoscaler.step()
    assert scaler.sets() == []  # idle for 59 s of 60
    env.clock.now = 60.0
    await env.autoscaler.step()
    assert scaler.calls[1:] == [
        ("costs", POOL, {R1: -100, R2: -100, R3: -100}),
        ("set", POOL, 1),
    ]
    assert env.scaled == [(POOL, 3, 1, "idle for 60s")]
    env.clock.now = 1000.0
    await env.autoscaler.step()
    assert scaler.sets() == [1]  # at min: nothing more


async def test_activity_restarts_the_idle_period() -> None:
    scaler = FakeScaler({POOL: 2})
    env = await started(scaler)
    env.replica(R1)
    env.clock.now = 30.0
    lease = env.lease()
    await env.autoscaler.step()  # sees the lease: active at t=30
    lease.release()
    env.clock.now = 89.0
    await env.autoscaler.step()
    assert scaler.sets() == []
    env.clock.now = 90.0
    await env.autoscaler.step()
    assert scaler.sets() == [0]


async def test_a_poke_counts_as_activity() -> None:
    scaler = FakeScaler({POOL: 1})
    env = await started(scaler)
    env.replica(R1)
    env.clock.now = 50.0
    env.autoscaler.poke(POOL)  # a request waited (and was served since)
    env.clock.now = 100.0
    await env.autoscaler.step()
    assert scaler.sets() == []
    env.clock.now = 110.0
    await env.autoscaler.step()
    assert scaler.sets() == [0]


async def test_no_scale_down_while_a_server_runs_another_pools_request() -> None:
    """Issue 13: the pool's own leases are none, but its server is busy with pool b's
    request (a replica listed by both, as during a move): it is not idle."""
    scaler = FakeScaler({POOL: 1})
    env = await started(scaler, pool(), pool("b", autoscale=False))
    env.replica(R1)
    env.replica(R1, pool="b")
    lease = env.lease("b")
    env.clock.now = 500.0
    await env.autoscaler.step()
    assert scaler.sets() == []
    lease.release()
    env.clock.now = 559.0
    await env.autoscaler.step()
    assert scaler.sets() == []  # idle since the last step that saw it busy (t=500)
    env.clock.now = 560.0
    await env.autoscaler.step()
    assert scaler.sets() == [0]


async def test_load_warmroute_did_not_lease_keeps_the_pool_busy() -> None:
    """A fenced server (a new leader's takeover) or direct traffic is a busy GPU."""
    scaler = FakeScaler({POOL: 1})
    env = await started(scaler)
    env.replica(R1)
    env.registry.apply(ReplicaExternalLoad(POOL, R1, 1))
    env.clock.now = 500.0
    await env.autoscaler.step()
    assert scaler.sets() == []


def test_deletion_costs_count_every_pools_requests_on_a_server() -> None:
    load = PoolLoad(
        waiting=0,
        replicas=(
            ReplicaLoad(R1, Phase.WARM, 2, in_flight=0, busy=0),
            ReplicaLoad(R2, Phase.WARM, 2, in_flight=0, busy=2),  # another pool's
            ReplicaLoad(R3, Phase.DRAINING, 2, in_flight=1, busy=1),
            ReplicaLoad("10.0.0.9:8000", Phase.GONE, 2, in_flight=1, busy=1),
        ),
    )
    assert deletion_costs(load) == {R1: -100, R2: 102, R3: 101}


# -- bounds, failures, configuration ---------------------------------------------------------


async def test_a_target_below_min_is_raised_at_once_without_demand() -> None:
    scaler = FakeScaler({POOL: 0})
    env = await started(scaler, pool(min_replicas=2))
    await env.autoscaler.step()
    assert scaler.sets() == [2]
    assert env.scaled[0][:3] == (POOL, 0, 2)


async def test_at_max_a_longer_queue_asks_nothing() -> None:
    scaler = FakeScaler({POOL: 2})
    env = await started(scaler, pool(max_replicas=2))
    env.replica(R1)
    env.replica(R2)
    env.lease()
    env.lease()
    env.wait(5)
    await env.autoscaler.step()
    assert scaler.sets() == []


async def test_a_failed_platform_call_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scaler = FakeScaler()
    scaler.fail_next = 1
    env = await started(scaler, pool(), pool("other"))
    env.wait(1)
    env.wait(1, "other")
    with caplog.at_level(logging.ERROR, logger="warmroute.autoscale.controller"):
        await env.autoscaler.step()
    assert "autoscaling pool main failed" in caplog.text
    assert scaler.replicas == {"other": 1}  # the other pool still scaled
    assert env.scaled == [("other", 0, 1, "1 waiting, 0 slots loading")]
    await env.autoscaler.step()  # the target was not recorded: asked again
    assert scaler.sets() == [1, 1, 1]
    assert scaler.replicas == {POOL: 1, "other": 1}


async def test_a_pool_missing_from_the_registry_is_skipped() -> None:
    scaler = FakeScaler()
    env = await started(scaler)
    env.registry.configure([])  # e.g. mid-reload: the autoscaler still lists it
    await env.autoscaler.step()
    assert scaler.sets() == []


async def test_a_pool_added_by_a_reload_reads_its_target_first() -> None:
    scaler = FakeScaler({"new": 1})
    env = await started(scaler)
    cfg = Config.model_validate({"pools": [pool(), pool("new")]})
    env.registry.configure(cfg.specs())
    env.autoscaler.configure(cfg)
    env.wait(2, "new")
    await env.autoscaler.step()
    assert ("get", "new") in scaler.calls
    assert env.scaled == [("new", 1, 2, "2 waiting, 0 slots loading")]


async def test_configure_without_autoscale_stops_scaling_the_pool() -> None:
    scaler = FakeScaler()
    env = await started(scaler)
    env.autoscaler.configure(Config.model_validate({"pools": [pool(autoscale=False)]}))
    env.wait(3)
    await env.autoscaler.step()
    assert scaler.sets() == []


@pytest.mark.parametrize("turns", range(6))
async def test_stop_always_ends_the_loop_even_when_a_poke_lands_with_the_cancel(turns: int) -> None:
    """A request queuing just as the control plane stops must not keep the loop alive: on
    Python 3.11, ``asyncio.wait_for`` returns the inner result and drops a cancellation that
    lands in the same turns as its inner wait completes (the loop then ran forever)."""
    env = await started(FakeScaler(), tick=3600)
    task = asyncio.create_task(env.autoscaler.run())
    for _ in range(10):  # into its wait for a poke
        await asyncio.sleep(0)
    env.autoscaler.poke(POOL)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
