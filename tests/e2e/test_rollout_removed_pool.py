"""A pool removed by a staged rollout keeps serving until every Envoy has left it (issue 13).

Two Envoys share the listener (SO_REUSEPORT). The canary takes the config that drops pool
``old`` at once; the other Envoy stays on the previous version for the soak and still routes
``other-model`` there. Every request must get 200 (served by the kept pool's replica) or an
immediate clean 404 (the canary no longer serves the model), never a queue timeout.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.stack import MODEL, SimFactory, StackFactory
from tests.helpers import wait_for
from warmroute.config import Config

VARIANTS = ["sotw", "delta"]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_removed_pool_serves_or_answers_404_during_the_rollout(
    stack_factory: StackFactory, sim_factory: SimFactory, variant: str
) -> None:
    old_sim = await sim_factory(slots=1, service_ms=5.0, seed=7, model="other-model")
    old_pool = {
        "name": "old",
        "models": ["other-model"],
        "queue": {"timeout_seconds": 5},
        "probe": {"path": "/health", "interval_seconds": 0.05},
        "replicas": [old_sim.address],
    }
    stack = await stack_factory(replicas=1, variant=variant, node_id="envoy-0", extra_pool=old_pool)
    await stack.add_envoy("envoy-1", variant)
    plane = stack.plane
    await wait_for(lambda: len(plane.rollout.connected()) == 2, what="two Envoys")
    await stack.wait_warm(2)
    await wait_for(lambda: plane.rollout.status()["stage"] == "stable", what="stable")

    doc = stack.config.model_dump()
    doc["pools"] = [p for p in doc["pools"] if p["name"] != "old"]
    doc["xds"]["rollout"] = {"canary_nodes": ["envoy-0"], "soak_seconds": 60}
    label = await plane.reload(Config.model_validate(doc))
    await wait_for(
        lambda: plane.rollout.status()["nodes"]["envoy-0"]["config"] == label,
        what="the canary on the new version",
    )
    assert plane.rollout.status()["nodes"]["envoy-1"]["config"] != label

    statuses: list[int] = []
    # A fresh connection per request, so the kernel spreads them over both Envoys; a
    # client timeout below the pool's 5 s queue timeout turns a hang into a failure.
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=timeout
    ) as http:

        async def ask() -> None:
            async with http.post(
                stack.url + "/v1/chat/completions",
                json={"model": "other-model", "messages": []},
            ) as r:
                await r.read()
                statuses.append(r.status)

        for _ in range(40):
            await ask()
        # Untouched models never fail across the change.
        async with http.post(stack.url + "/v1/completions", json={"model": MODEL}) as r:
            assert r.status == 200

    assert set(statuses) <= {200, 404}, statuses
    assert 200 in statuses and 404 in statuses, statuses  # both Envoys were asked
    assert old_sim.stats().received == statuses.count(200)
    assert old_sim.stats().received_while_full == 0
    assert stack.metric("warmroute_requests_total", outcome="rejected_queue_timeout") == 0
    await asyncio.wait_for(stack.wait_idle(), 10)
