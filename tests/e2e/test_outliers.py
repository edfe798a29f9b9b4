"""Outlier detection with a real Envoy: what replicas actually received, counted at the
simulated replicas (DESIGN.md fact 12: a replica failing fast with a green health check
took 98 % of the traffic before)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack import (
    MODEL,
    EnvoyFactory,
    PlaneFactory,
    SimFactory,
    Stack,
    StackFactory,
    background,
    client,
)
from tests.e2e.test_epp_envoy import start_epp_stack
from tests.helpers import wait_for

H = {"x-model": MODEL}
LOGGER = "warmroute.director.outliers"


async def _post(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    """(status, the replica that answered, from its x-sim-replica header; "" if none)."""
    async with http.post(url + "/v1/x", headers={**H, **headers}) as r:
        await r.read()
        return r.status, r.headers.get("x-sim-replica", "")


def _ejected(stack: Stack) -> int:
    return sum(p.ejected for p in stack.plane.registry.view().pools)


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == LOGGER and text in r.getMessage())


async def _traffic(
    stack: Stack, requests: int, clients: int, statuses: list[int], **headers: str
) -> None:
    """``requests`` requests from ``clients`` closed-loop clients; statuses appended."""
    async with client() as http:
        left = iter(range(requests))

        async def one_client() -> None:
            for _ in left:
                statuses.append((await _post(http, stack.url, **headers))[0])

        await asyncio.gather(*(one_client() for _ in range(clients)))


async def test_a_replica_failing_every_request_gets_little_traffic_and_returns_once_healed(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    outlier = {"base_ejection_seconds": 1.0, "max_ejection_seconds": 4.0}
    stack = await stack_factory(
        replicas=4, service_ms=50, pool_extra={"outlier_detection": outlier}
    )
    await stack.wait_warm()
    broken, *healthy = stack.replicas
    broken.set_failing(500)  # 500 in ~1 ms, /health still 200
    statuses: list[int] = []
    await _traffic(stack, 400, 8, statuses)
    await stack.wait_idle()  # every access-log entry is in
    received = {r.address: r.stats().received for r in stack.replicas}
    share = received[broken.address] / sum(received.values())
    success = statuses.count(200) / len(statuses)
    print(
        f"\nbroken replica: {received[broken.address]} of {sum(received.values())} requests "
        f"({share:.1%}); clients: {success:.1%} success; "
        f"{stack.metric('warmroute_replica_ejections_total')} ejections"
    )
    assert set(statuses) <= {200, 500}, Counter(statuses)
    assert share <= 0.10
    assert success >= 0.90
    assert stack.metric("warmroute_replica_ejections_total", replica=broken.address) >= 1
    assert all(r.stats().failed == 0 for r in healthy)
    # It heals: it comes back by itself (at most max_ejection_seconds) and serves again.
    broken.set_failing(None)
    served = broken.stats().completed
    async with client() as http:

        async def load(stop: asyncio.Event) -> None:
            while not stop.is_set():
                await _post(http, stack.url)

        async with background(load, 4):
            await wait_for(
                lambda: broken.stats().completed >= served + 5, timeout=15, what="healed replica"
            )
    await stack.wait_idle()
    assert _ejected(stack) == 0
    assert stack.metric("warmroute_replica_ejected", replica=broken.address) == 0
    ejections = stack.metric("warmroute_replica_ejections_total")
    # Exactly one line per ejection and one per return (every ejection has ended).
    assert _lines(caplog, "ejected for") == ejections
    assert _lines(caplog, "back in service") == ejections
    assert all(r.stats().received_while_full == 0 for r in stack.replicas)


async def test_when_every_replica_fails_the_cap_keeps_half_of_them_answering(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stack = await stack_factory(replicas=4, service_ms=20)  # defaults: 50 %, 10 s
    await stack.wait_warm()
    for r in stack.replicas:
        r.set_failing(500)
    statuses: list[int] = []
    await _traffic(stack, 200, 4, statuses)
    await stack.wait_idle()  # every access-log entry is in
    received = [r.stats().failed for r in stack.replicas]
    print(f"\nevery replica failing: statuses {Counter(statuses)}, per replica {received}")
    # Clients get the replicas' answers (the 500s), never a refusal or a queue timeout.
    assert statuses == [500] * 200
    assert sum(received) == 200
    # Two ejections and no return (10 s each): never more than 2 of 4 out at once.
    assert stack.metric("warmroute_replica_ejections_total") == 2
    assert _lines(caplog, "back in service") == 0
    assert _ejected(stack) == 2
    assert stack.metric("warmroute_replica_ejections_capped_total") > 0
    assert sorted(received)[:2] == [5, 5]  # the ejected ones took 5 each; the others, the rest


async def test_a_replica_answering_full_is_skipped_for_a_moment_and_never_ejected(
    stack_factory: StackFactory,
) -> None:
    outlier = {"consecutive_failures": 2, "full_backoff_seconds": 0.5}
    stack = await stack_factory(
        replicas=2, service_ms=20, pool_extra={"outlier_detection": outlier}
    )
    await stack.wait_warm()
    answered: list[str] = []
    async with client() as http:
        for i in range(12):  # the replica itself says it is full: 503, or 429
            full = {"x-sim-status": ("503", "429")[i % 2]}
            status, replica = await _post(http, stack.url, **full)
            assert status in (503, 429) and replica
            answered.append(replica)
    # Backed off after each "full": the next request goes to the other one (or waits for
    # the first back-off to end), never straight back.
    assert all(a != b for a, b in itertools.pairwise(answered)), answered
    await stack.wait_idle()  # every access-log entry is in
    assert stack.metric("warmroute_replica_full_answers_total") == 12
    assert stack.metric("warmroute_replica_ejections_total") == 0


async def test_a_replica_full_of_traffic_warmroute_did_not_lease_is_backed_off(
    stack_factory: StackFactory,
) -> None:
    outlier = {"consecutive_failures": 1, "full_backoff_seconds": 30}
    stack = await stack_factory(
        replicas=2, service_ms=20, pool_extra={"outlier_detection": outlier}
    )
    await stack.wait_warm()
    busy, other = stack.replicas  # the pool's first: the one an idle pool picks first
    async with client() as http:
        direct = f"http://{busy.address}"
        outside = asyncio.create_task(_post(http, direct, **{"x-sim-service-ms": "3000"}))
        await wait_for(lambda: busy.stats().in_flight == 1, what="outside load")
        results = [await _post(http, stack.url) for _ in range(6)]
        assert (await outside)[0] == 200
    # One request found it full (the replica's own 503 "replica full" reached the client);
    # then it was skipped, and nothing counted toward an ejection (1 failure would eject).
    assert results[0] == (503, busy.address)
    assert results[1:] == [(200, other.address)] * 5
    await stack.wait_idle()  # every access-log entry is in
    assert busy.stats().received_while_full == 1
    assert stack.metric("warmroute_replica_full_answers_total", replica=busy.address) == 1
    assert stack.metric("warmroute_replica_ejections_total") == 0
    (pool,) = stack.plane.registry.view().pools
    (state,) = [r for r in pool.replicas if r.address == busy.address]
    assert state.outlier is not None and state.outlier.backoff_seconds_left > 20


async def test_picker_mode_ejects_on_failures_seen_in_the_response_phase(
    sim_factory: SimFactory, plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    stack = await start_epp_stack(sim_factory, plane_factory, envoy_factory, replicas=3)
    broken = stack.replicas[0]
    broken.set_failing(500)
    statuses: list[int] = []

    async def send(http: aiohttp.ClientSession) -> None:
        for _ in range(30):
            body: dict[str, Any] = {"model": MODEL, "prompt": "hi"}
            async with http.post(f"{stack.url}/v1/completions", json=body) as r:
                await r.read()
                statuses.append(r.status)

    async with client() as http:
        await asyncio.gather(*(send(http) for _ in range(4)))
    received = {r.address: r.stats().received for r in stack.replicas}
    print(f"\npicker mode: received {received}, statuses {Counter(statuses)}")
    # Defaults: the 5th failure in a row ejects, for 10 s; every failure is seen in the
    # response phase before the lease is released, so not one request more.
    assert received[broken.address] == 5
    assert statuses.count(500) == 5 and statuses.count(200) == 115
    (pool,) = stack.plane.registry.view().pools
    assert pool.ejected == 1 and pool.ejections == 1
    await stack.quiescent()
