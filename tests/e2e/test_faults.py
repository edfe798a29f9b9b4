"""Faults with real Envoy and real processes. After each: no lease left, no replica ever
over its slots, and every request answered (a response or a clean error), none hanging."""

from __future__ import annotations

import asyncio
import json
import random

import aiohttp
import pytest

from tests.e2e.stack import MODEL, Stack, StackFactory, background, client
from tests.helpers import wait_for
from warmroute.server import ControlPlane
from warmroute.state import Phase

H = {"x-model": MODEL}


async def _post(http: aiohttp.ClientSession, stack: Stack, **headers: str) -> int:
    try:
        async with http.post(stack.url + "/v1/x", headers={**H, **headers}) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError:
        return 0  # connection refused or reset: a clean error, not a hang


def _never_overfilled(stack: Stack) -> None:
    assert stack.full_hits() == 0
    assert all(r.stats().max_in_flight <= 1 for r in stack.replicas)


async def test_clients_leaving_at_random_points_leave_nothing_behind(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=2, service_ms=100)
    rng = random.Random(7)
    await stack.wait_warm()
    outcomes: list[str] = []
    async with client() as http:

        async def one() -> None:
            task = asyncio.create_task(_post(http, stack))
            leave_after = rng.choice([None, 0.0, 0.01, 0.05, 0.15, 0.3])
            if leave_after is None:
                outcomes.append(str(await task))
                return
            done, _ = await asyncio.wait({task}, timeout=leave_after)
            if done:
                outcomes.append(str(task.result()))
            else:
                task.cancel()  # the client goes away: before a lease, queued, or mid-way
                outcomes.append("left")

        await asyncio.gather(*(one() for _ in range(60)))
    await stack.wait_idle()
    await wait_for(lambda: all(r.stats().in_flight == 0 for r in stack.replicas))
    assert len(outcomes) == 60 and set(outcomes) <= {"200", "left"}
    _never_overfilled(stack)
    print(f"\n{outcomes.count('200')} served, {outcomes.count('left')} left early")


async def test_replica_killed_mid_request(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=2, service_ms=20)
    await stack.wait_warm()
    a, b = stack.replicas
    async with client() as http:
        long = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "5000"}))
        await wait_for(lambda: a.stats().in_flight + b.stats().in_flight == 1)
        victim = a if a.stats().in_flight else b
        await victim.stop()  # the model server dies with the request inside
        assert await long in (502, 503)
        await stack.wait_idle()
        pool = stack.plane.registry.pools["main"]
        await wait_for(lambda: pool.replicas[victim.address].phase is Phase.LOADING)
        for _ in range(3):
            assert await _post(http, stack) == 200
    assert stack.metric("warmroute_requests_total", outcome="upstream_error") == 1
    _never_overfilled(stack)


async def test_replica_that_hangs_is_cut_at_the_route_timeout(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, max_request_seconds=0.5)
    await stack.wait_warm()
    async with client() as http:
        assert await _post(http, stack, **{"x-sim-service-ms": "5000"}) == 504
        await stack.wait_idle()
    assert stack.metric("warmroute_requests_total", outcome="upstream_timeout") == 1


async def test_unhealthy_replica_finishes_in_flight_and_takes_no_more(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=2, service_ms=20)
    await stack.wait_warm()
    a, b = stack.replicas
    async with client() as http:
        long = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "1500"}))
        await wait_for(lambda: a.stats().in_flight + b.stats().in_flight == 1)
        sick = a if a.stats().in_flight else b
        sick.set_healthy(False)
        pool = stack.plane.registry.pools["main"]
        await wait_for(lambda: pool.replicas[sick.address].phase is Phase.LOADING)
        before = sick.stats().received
        for _ in range(3):
            assert await _post(http, stack) == 200
        assert sick.stats().received == before
        assert await long == 200  # what it already had, it finished
    await stack.wait_idle()
    _never_overfilled(stack)


async def test_envoy_restarted_under_load(stack_factory: StackFactory) -> None:
    # Envoy dies without logging the ends of the requests it was carrying: their leases
    # are reconciled from the replicas' own metrics (or, without metrics, at deadline).
    scrape = {"interval_seconds": 0.1, "reconcile_after_seconds": 0.5}
    stack = await stack_factory(replicas=2, service_ms=50, pool_extra={"metrics": scrape})
    await stack.wait_warm()
    statuses: list[int] = []
    async with client() as http:

        async def load(stop: asyncio.Event) -> None:
            for _ in range(400):
                if stop.is_set():
                    return
                statuses.append(await _post(http, stack))

        async with background(load, 4):
            await wait_for(lambda: statuses.count(200) >= 10, what="traffic")
            await stack.envoy.stop()
            await stack.envoy.start()
            served = statuses.count(200)
            await wait_for(lambda: statuses.count(200) >= served + 10, what="traffic again")
    await stack.wait_idle(timeout=15)
    assert set(statuses) <= {200, 0, 503}, statuses
    _never_overfilled(stack)
    print(f"\nEnvoy restart: {statuses.count(200)} ok, {len(statuses) - statuses.count(200)}"
          " clean errors")  # fmt: skip


@pytest.mark.parametrize("allow", [False, True])
async def test_control_plane_restarted_under_load(stack_factory: StackFactory, allow: bool) -> None:
    stack = await stack_factory(replicas=2, service_ms=30, max_request_seconds=2,
                              lease_grace=0.5, expire_interval=0.1)  # fmt: skip
    doc = stack.config.model_dump()
    doc["routing"]["failure_mode_allow"] = allow
    doc["xds"]["rollout"]["soak_seconds"] = 0
    from warmroute.config import Config

    stack.config = Config.model_validate(doc)
    await stack.plane.reload(stack.config)
    await stack.wait_warm()

    async def applied() -> bool:
        from tests.e2e import envoy_admin

        dump = await envoy_admin.get_json(stack.config.envoy.admin, "/config_dump")
        return ('"failure_mode_allow": true' in json.dumps(dump)) == allow

    await wait_for(applied, what="failure_mode_allow in Envoy")
    async with client() as http:
        assert await _post(http, stack) == 200
        await stack.plane.stop()
        # While warmroute is away: refuse cleanly, or route without a lease.
        during = [await _post(http, stack) for _ in range(3)]
        assert during == ([200] * 3 if allow else [503] * 3)
        stack.plane = ControlPlane(stack.config)
        await stack.plane.start()
        await stack.wait_warm()

        async def served() -> bool:
            return await _post(http, stack) == 200

        await wait_for(served, timeout=20, what="served after the restart")
    await stack.wait_idle()
    _never_overfilled(stack)


async def test_bad_headers_get_clear_errors_and_lease_nothing(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    async with client() as http:
        url = stack.url + "/v1/x"
        # Two model headers: Envoy's route decides the pool and warmroute leases in that
        # pool, or nothing matches and it is refused; never a lease Envoy won't follow.
        dup = [("x-model", MODEL), ("x-model", "other")]
        async with http.post(url, headers=dup) as r:
            assert r.status in (200, 404)
            served = r.status == 200
        async with http.post(url, headers={"x-model": ""}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "missing_model"
        async with http.post(url, headers={"x-model": "m" * 300}) as r:
            assert r.status == 404
            assert len((await r.json())["error"]["message"]) < 400  # echo is bounded
        async with http.post(url, headers={**H, "x-big": "a" * 100_000}) as r:
            assert r.status == 431  # Envoy's header limit, before any lease
    assert stack.replicas[0].stats().received == int(served)
    assert stack.plane.registry.view().pools[0].granted_immediately == int(served)
    assert stack.metric("warmroute_upstream_mismatch_total") == 0


async def test_slow_client_is_cut_before_any_lease(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    doc = stack.config.model_dump()
    doc["envoy"]["request_headers_timeout_seconds"] = 0.5
    doc["xds"]["rollout"]["soak_seconds"] = 0
    from warmroute.config import Config

    stack.config = Config.model_validate(doc)
    label = await stack.plane.reload(stack.config)
    await wait_for(lambda: stack.plane.rollout.status()["stable"] == label, what="reload")
    await wait_for(
        lambda: stack.plane.rollout.status()["nodes"]["envoy-0"]["config"] == label,
        what="Envoy has the new listener",
    )
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/x HTTP/1.1\r\nhost: x\r\nx-model: " + MODEL.encode() + b"\r\n")
    await writer.drain()  # ...and the headers never finish
    answer = await asyncio.wait_for(reader.read(), 10)  # Envoy answers and closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:40]
    assert stack.replicas[0].stats().received == 0
    assert stack.plane.registry.view().pools[0].granted_immediately == 0


async def test_malformed_request_is_refused_by_envoy_before_any_lease(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/x HTTP/1.1\r\nx-model " + MODEL.encode() + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:40]
    assert stack.replicas[0].stats().received == 0
    assert stack.plane.registry.view().leases == 0
