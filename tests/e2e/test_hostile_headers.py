"""Clients cannot choose the replica or end someone else's lease."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.e2e.stack import MODEL, StackFactory, client
from tests.helpers import wait_for


async def test_client_cannot_steer_with_the_destination_header(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=2, service_ms=20)
    await stack.wait_warm()
    target = stack.replicas[0].address
    headers = {"x-model": MODEL, "x-gateway-destination-endpoint": target}
    async with client() as http:
        for _ in range(10):
            async with http.post(stack.url + "/v1/x", headers=headers, json={}) as r:
                assert r.status == 200
    received = [r.stats().received for r in stack.replicas]
    # warmroute spreads the work; the header chose nothing.
    assert received[1] >= 4, received
    for replica in stack.replicas:
        assert "x-gateway-destination-endpoint" not in replica.last_headers
    assert stack.metric("warmroute_upstream_mismatch_total") == 0


async def test_client_cannot_release_another_lease(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    replica = stack.replicas[0]
    async with client() as http:
        first = asyncio.create_task(
            http.post(
                stack.url + "/v1/x",
                headers={"x-model": MODEL, "x-sim-service-ms": "1500"},
                json={},
            )
        )
        await wait_for(lambda: replica.stats().in_flight == 1, what="first request running")
        (lease,) = stack.plane.registry.leases.values()
        forged = {"x-model": MODEL, "x-warmroute-lease": lease.id, "x-sim-service-ms": "1"}
        second = asyncio.create_task(http.post(stack.url + "/v1/x", headers=forged, json={}))
        await wait_for(
            lambda: len(stack.plane.registry.pools["main"].queue) == 1, what="second queued"
        )
        # Naming the lease in a header ends nothing: the first request still holds it.
        assert lease.ended is None and not first.done()
        r1, r2 = await first, await second
        assert (r1.status, r2.status) == (200, 200)
        r1.release()
        r2.release()
    await stack.wait_idle()
    assert replica.stats().max_in_flight == 1
    assert "x-warmroute-lease" not in replica.last_headers


async def test_no_secret_or_body_reaches_the_logs(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await stack_factory(replicas=1)
    await stack.wait_warm()
    with caplog.at_level(logging.DEBUG, logger="warmroute"):
        async with client() as http:
            headers = {"x-model": MODEL, "authorization": "Bearer tok-s3cr3t"}
            async with http.post(stack.url + "/v1/x", headers=headers, data="body-s3cr3t") as r:
                assert r.status == 200
            async with http.post(stack.url + "/v1/x", headers={
                "x-model": "nope", "authorization": "Bearer tok-s3cr3t"}) as r:  # fmt: skip
                assert r.status == 404
        await stack.wait_idle()
    assert "request" in caplog.text  # DEBUG logging did record these requests
    assert "s3cr3t" not in caplog.text
