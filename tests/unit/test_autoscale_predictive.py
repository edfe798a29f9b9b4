"""The autoscaler in ``mode: predictive`` against ``every_wait``: a real Registry, a fake
clock and the fake Scaler of test_autoscale_controller.

What it promises: with the service time learned, a queue the warm replicas clear within a
cold start asks for nothing (``every_wait`` asks for a replica per uncovered waiter); a
queue they cannot clear in time asks for replicas; the decision and its reason are logged
at DEBUG and shown in the registry's view.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_autoscale_controller import POOL, R1, R2, Env, FakeScaler, pool
from warmroute.state import Phase


def predictive(mode: str = "predictive", **kw: Any) -> dict[str, Any]:
    p = pool(max_replicas=8, **kw)
    p["autoscale"] |= {"mode": mode, "cold_start_seconds": 3.0}
    return p


async def learned(mode: str, service: float = 0.2) -> Env:
    """Two warm 1-slot replicas, one request of ``service`` seconds already served."""
    scaler = FakeScaler({POOL: 2})
    env = Env(scaler, predictive(mode))
    await env.autoscaler.start()
    env.replica(R1)
    env.replica(R2)
    lease = env.lease()
    env.clock.now += service
    lease.release()
    return env


async def test_a_queue_the_warm_replicas_clear_in_time_waits() -> None:
    env = await learned("predictive")
    for _ in range(2):
        env.lease()
    env.wait(10)  # the last starts after 5 rounds of 0.2 s: 1 s < a 3 s cold start
    await env.autoscaler.step()
    assert env.scaler.sets() == []
    view = env.registry.view().pools[0].forecast
    assert view is not None and view.last_scale_up == 0
    assert view.last_reason is not None and view.last_reason.startswith("wait warm")
    assert view.service_mean == pytest.approx(0.2)


async def test_every_wait_scales_for_the_same_queue() -> None:
    env = await learned("every_wait")
    for _ in range(2):
        env.lease()
    env.wait(10)
    await env.autoscaler.step()
    assert env.scaler.sets() == [8]  # one per waiter, capped at max
    view = env.registry.view().pools[0].forecast
    assert view is not None and view.last_reason is not None
    assert view.last_reason.startswith("every_wait")


async def test_a_queue_longer_than_a_cold_start_scales_up(caplog: pytest.LogCaptureFixture) -> None:
    env = await learned("predictive", service=1.0)
    for _ in range(2):
        env.lease()
    env.wait(10)  # the last starts after 5 s of 1 s requests on 2 slots: > 3 s
    with caplog.at_level(logging.DEBUG, logger="warmroute.autoscale.controller"):
        await env.autoscaler.step()
    sets = env.scaler.sets()
    assert len(sets) == 1 and 2 < sets[0] < 8  # more replicas, not one per waiter
    assert env.scaled[0][3].startswith("start cold")
    assert any("start cold" in r.getMessage() for r in caplog.records)


async def test_predictive_without_a_measured_service_covers_every_waiter() -> None:
    scaler = FakeScaler()
    env = Env(scaler, predictive())
    await env.autoscaler.start()
    env.wait(3)
    await env.autoscaler.step()
    assert scaler.sets() == [3]


async def test_loading_replicas_count_as_coming_capacity() -> None:
    env = await learned("predictive", service=1.0)
    for _ in range(2):
        env.lease()
    env.replica("10.0.0.9:8000", Phase.LOADING)
    env.replica("10.0.0.8:8000", Phase.LOADING)
    env.wait(4)  # two warm + two loading slots (free in 3 s): the 4th starts at 1 s
    await env.autoscaler.step()
    assert env.scaler.sets() == []


def test_config_fields_and_their_validation() -> None:
    from pydantic import ValidationError

    from warmroute.config import AutoscaleConfig, QueueConfig

    default = AutoscaleConfig()
    assert default.mode == "every_wait" and default.cold_start_seconds == 30.0
    assert QueueConfig().reject_when_unmeetable is False
    assert AutoscaleConfig(mode="predictive", cold_start_seconds=90).mode == "predictive"
    for bad in ({"mode": "sometimes"}, {"cold_start_seconds": 0}, {"cold_start_seconds": "inf"}):
        with pytest.raises(ValidationError):
            AutoscaleConfig.model_validate(bad)
