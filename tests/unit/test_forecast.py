"""Unit tests of ``warmroute/state/forecast.py`` and the pool's hooks that feed it.

What it promises: service times are learned from leases that end FINISHED only; a cold
start is LOADING-first-seen to WARM, per replica, its estimate the median (the prior
until one is measured); ``predict_wait`` is the FCFS start of a queue position on slots
freeing at given times; ``decide`` waits while the last waiter's predicted wait is within
the cold start and the queue timeout, and otherwise adds the fewest replicas that bring it
within the cold start (at most ``room``).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmroute.state import EndReason, Phase, Pool, PoolSpec
from warmroute.state.ask import Ask
from warmroute.state.forecast import (
    ColdStarts,
    ServiceStats,
    Supply,
    decide,
    predict_wait,
    wait_on_slots,
)

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_pool(clock: FakeClock) -> Pool:
    ids = iter(range(10**6))
    return Pool(PoolSpec("p", ("m",)), clock=clock, new_id=lambda: str(next(ids)), leases={})


# -- learning ------------------------------------------------------------------------------


def test_service_stats_mean_and_quantiles() -> None:
    s = ServiceStats()
    assert s.quantile(0.9) is None and s.count == 0
    s.observe(1.0)
    assert s.mean == 1.0  # the first sample is the mean
    for _ in range(200):
        s.observe(0.2)
    assert s.mean == pytest.approx(0.2, abs=1e-6)
    assert s.quantile(0.5) == 0.2
    assert s.quantile(1.0) == 1.0


def test_pool_learns_service_from_finished_leases_only() -> None:
    clock = FakeClock()
    pool = make_pool(clock)
    pool.upsert(A, 2, Phase.WARM)
    first = pool.try_acquire(Ask("r1"))
    second = pool.try_acquire(Ask("r2"))
    assert first is not None and second is not None
    clock.now = 0.5
    first.release()
    clock.now = 9.0
    second.release(EndReason.EXPIRED)  # says nothing about service
    s = pool.forecast.service
    assert s.count == 1 and s.mean == 0.5
    view = pool.forecast.view()
    assert view.service_mean == 0.5 and view.service_p90 == 0.5 and view.service_samples == 1


def test_cold_start_is_loading_to_warm_per_replica() -> None:
    clock = FakeClock()
    pool = make_pool(clock)
    clock.now = 10.0
    pool.upsert(A, 1, Phase.LOADING)
    clock.now = 11.0
    pool.upsert(A, 1, Phase.LOADING)  # still loading: the clock is not restarted
    pool.upsert(B, 1, Phase.LOADING)
    clock.now = 13.0
    pool.upsert(A, 1, Phase.WARM)
    assert pool.forecast.cold.measured() == 3.0
    pool.upsert(A, 1, Phase.WARM)  # warm again: no second measurement
    assert pool.forecast.cold.count == 1
    assert pool.forecast.cold.loading_for(B, 13.0) == 2.0


def test_a_replica_that_leaves_while_loading_is_not_counted() -> None:
    cold = ColdStarts()
    cold.transition(A, None, Phase.LOADING, 0.0)
    cold.transition(A, Phase.LOADING, Phase.DRAINING, 1.0)
    cold.transition(A, Phase.DRAINING, Phase.WARM, 50.0)
    assert cold.count == 0 and cold.estimate(7.0) == 7.0  # the prior until measured


def test_cold_estimate_is_the_median() -> None:
    cold = ColdStarts()
    for i, took in enumerate((3.0, 4.0, 60.0)):  # one slow node does not move it
        addr = f"10.0.1.{i}:80"
        cold.transition(addr, None, Phase.LOADING, 0.0)
        cold.transition(addr, Phase.LOADING, Phase.WARM, took)
    assert cold.estimate(30.0) == 4.0


# -- predicting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "slots", "busy", "service", "expected"),
    [
        (1, 2, [], 1.0, 0.0),  # a free slot: no wait
        (1, 2, [0.5, 0.3], 1.0, 0.3),  # the first to free
        (3, 2, [0.5, 0.3], 1.0, 1.3),  # behind two: the first slot's second turn
        (5, 1, [], 0.2, 0.8),
        (1, 0, [], 1.0, math.inf),  # no slot at all
        (0, 1, [5.0], 1.0, 0.0),  # not queued
    ],
)
def test_predict_wait_table(
    position: int, slots: int, busy: list[float], service: float, expected: float
) -> None:
    assert predict_wait(position, slots, busy, service) == pytest.approx(expected)


@given(
    st.integers(1, 40),
    st.integers(1, 8),
    st.lists(st.floats(0, 5), max_size=8),
    st.floats(0.01, 3),
)
def test_predict_wait_matches_closed_form(
    position: int, slots: int, busy: list[float], service: float
) -> None:
    """With remaining times at most one service, slot k (sorted) serves positions k,
    k + slots, ...: the wait is its remaining time plus whole rounds of service."""
    busy = [min(b, service) for b in busy[:slots]]
    free_at = sorted([0.0] * (slots - len(busy)) + busy)
    rounds, k = divmod(position - 1, slots)
    expected = free_at[k] + rounds * service
    assert predict_wait(position, slots, busy, service) == pytest.approx(expected)


@given(st.integers(1, 30), st.lists(st.floats(0, 10), min_size=1, max_size=6), st.floats(0, 2))
def test_wait_never_shrinks_down_the_queue(
    position: int, free_at: list[float], service: float
) -> None:
    assert wait_on_slots(free_at, position, service) <= wait_on_slots(
        free_at, position + 1, service
    )


# -- deciding ------------------------------------------------------------------------------


def supply(waiting: int, free: list[float], service: float | None, cold: float) -> Supply:
    return Supply(waiting, tuple(free), service, cold)


def test_a_burst_the_warm_replicas_absorb_waits() -> None:
    # 10 waiting on 4 free slots of 0.2 s: the last starts at 0.4 s, a cold start takes 3 s.
    d = decide(supply(10, [0.0] * 4, 0.2, 3.0), queue_timeout=30, slots_per_replica=1, room=4)
    assert d.scale_up == 0 and d.reason.startswith("wait warm")
    assert d.predicted_wait == pytest.approx(0.4)


def test_a_long_queue_starts_the_fewest_replicas_that_help() -> None:
    # 40 waiting on 2 slots of 0.5 s: the last waits 19.5 s. With k new 1-slot replicas
    # free at 3 s the last waiter starts within 3 s once 2 + k slots cover the queue by
    # then: 2 slots serve 7 each by 3 s (0..3 in 0.5 steps) = 14, each new one 1.
    d = decide(supply(40, [0.0, 0.0], 0.5, 3.0), queue_timeout=60, slots_per_replica=1, room=50)
    assert d.reason.startswith("start cold")
    slots = [0.0, 0.0] + [3.0] * d.scale_up
    assert wait_on_slots(slots, 40, 0.5) <= 3.0
    assert wait_on_slots(slots[:-1], 40, 0.5) > 3.0  # one fewer would not do


def test_room_bounds_the_scale_up() -> None:
    d = decide(supply(40, [0.0], 1.0, 3.0), queue_timeout=60, slots_per_replica=2, room=2)
    assert d.scale_up == 2
    full = decide(supply(40, [0.0], 1.0, 3.0), queue_timeout=60, slots_per_replica=2, room=0)
    assert full.scale_up == 0 and "max" in full.reason


def test_a_wait_beyond_the_queue_timeout_scales_even_if_a_cold_start_is_slower() -> None:
    d = decide(supply(30, [0.0], 1.0, 100.0), queue_timeout=10, slots_per_replica=1, room=3)
    assert d.scale_up == 1 and "queue timeout" in d.reason


def test_no_service_time_yet_covers_every_waiter() -> None:
    d = decide(supply(5, [3.0], None, 3.0), queue_timeout=30, slots_per_replica=2, room=8)
    assert d.scale_up == 2  # 4 uncovered waiters, 2 slots per replica


def test_a_cold_pool_starts_replicas() -> None:
    d = decide(supply(1, [], 0.2, 3.0), queue_timeout=30, slots_per_replica=1, room=4)
    assert d.scale_up == 1 and "never" in d.reason


@given(
    st.integers(0, 60),
    st.lists(st.floats(0, 20), max_size=10),
    st.floats(0.01, 5),
    st.floats(0.1, 30),
    st.integers(1, 4),
    st.integers(0, 10),
)
def test_decide_properties(
    waiting: int, free: list[float], service: float, cold: float, per: int, room: int
) -> None:
    d = decide(
        supply(waiting, free, service, cold), queue_timeout=60, slots_per_replica=per, room=room
    )
    assert 0 <= d.scale_up <= room
    wait = wait_on_slots(free, waiting, service) if waiting else 0.0
    if waiting == 0 or (wait <= cold and wait <= 60):
        assert d.scale_up == 0  # never starts a replica the last waiter does not need
    elif room > 0:
        assert d.scale_up >= 1
        after = wait_on_slots([*free, *[cold] * (per * d.scale_up)], waiting, service)
        assert after <= cold or d.scale_up == room


def test_pool_supply_counts_busy_loading_and_asked_slots() -> None:
    clock = FakeClock()
    pool = make_pool(clock)
    pool.upsert(A, 2, Phase.WARM)
    lease = pool.try_acquire(Ask("r1"))
    assert lease is not None
    clock.now = 1.0
    lease.release()  # learns 1.0 s
    held = pool.try_acquire(Ask("r2"))
    assert held is not None
    pool.upsert(B, 1, Phase.LOADING)
    clock.now = 1.25
    s = pool.supply(5.0, asked_slots=1)
    assert s.service == 1.0 and s.cold_start == 5.0
    assert sorted(s.slot_free_in) == pytest.approx([0.0, 0.75, 4.75, 5.0])
    assert pool.predicted_wait(5.0) == 0.0  # a slot is free
    assert pool.predicted_wait(5.0, position=2) == pytest.approx(0.75)


def test_no_prediction_before_a_request_finished() -> None:
    pool = make_pool(FakeClock())
    pool.upsert(A, 1, Phase.WARM)
    assert pool.predicted_wait(5.0) is None


def test_state_and_its_text_show_what_the_pool_learned() -> None:
    from warmroute.state import Registry
    from warmroute.state.forecast import Decision
    from warmroute.view import render

    clock = FakeClock()
    registry = Registry(clock=clock)
    registry.configure([PoolSpec("p", ("m",))])
    pool = registry.pools["p"]
    assert "learned" not in render(registry.view().to_json())  # nothing measured yet
    pool.upsert(A, 1, Phase.LOADING)
    clock.now = 4.0
    pool.upsert(A, 1, Phase.WARM)
    lease = pool.try_acquire(Ask("r"))
    assert lease is not None
    clock.now = 4.5
    lease.release()
    pool.forecast.record(Decision(2, "start cold: because", 9.0, 4.0, at=4.5))
    doc = registry.view().to_json()["pools"][0]["forecast"]
    assert doc["service_mean"] == 0.5 and doc["cold_start"] == 4.0
    assert doc["last_scale_up"] == 2 and doc["last_reason"] == "start cold: because"
    text = render(registry.view().to_json())
    assert "service mean 500 ms" in text and "cold start 4.0 s" in text
    assert "last decision: +2 (start cold: because)" in text
