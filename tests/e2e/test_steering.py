"""Per-request steering through a real Envoy: what each replica actually received."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack import MODEL, Stack, StackFactory, client
from tests.helpers import wait_for
from warmroute.front_end import OwnEnvoy

H = {"x-model": MODEL}


async def _post(
    http: aiohttp.ClientSession, stack: Stack, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(stack.url + "/v1/completions", headers={**H, **headers}, json={}) as r:
        return r.status, await r.json(content_type=None)


async def test_work_conserving_and_never_overloads(stack_factory: StackFactory) -> None:
    """K one-slot replicas, C >> K clients: all succeed, no replica is ever over its slot,
    Envoy always uses the leased replica, and every replica keeps working while clients wait.

    Throughput and latency are printed, not asserted: on a shared machine wall time says
    more about the neighbours than about warmroute (bench/ measures them)."""
    k, t, clients, total = 4, 0.25, 40, 96
    stack = await stack_factory(replicas=k, service_ms=t * 1e3)
    await stack.wait_warm()
    latencies: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            status, _ = await _post(http, stack)
            latencies.append(time.perf_counter() - start)
            statuses.append(status)

    async with client() as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    await stack.wait_idle()

    throughput = total / elapsed
    q = statistics.quantiles(latencies, n=100)
    max_in_flight = max(r.stats().max_in_flight for r in stack.replicas)
    print(
        f"\nthroughput {throughput:.1f} req/s (ideal {k / t:.1f}); latency p50 "
        f"{q[49] * 1e3:.0f} ms p99 {q[98] * 1e3:.0f} ms; max in-flight/replica {max_in_flight}"
    )
    assert statuses == [200] * total
    assert stack.full_hits() == 0
    assert max_in_flight == 1
    assert sum(r.stats().received for r in stack.replicas) == total
    assert stack.metric("warmroute_upstream_mismatch_total") == 0
    assert stack.metric("warmroute_requests_total", outcome="success") == total
    # Work conservation without a clock: requests always waited, so a replica left idle
    # while they did would have served well under its even share (total / k = 24).
    received = [r.stats().received for r in stack.replicas]
    assert min(received) >= total // (2 * k), received


async def test_streamed_response_keeps_its_slot_to_the_last_chunk(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(replicas=1, service_ms=50)
    await stack.wait_warm()
    async with client() as http:
        chunks = 0
        second: asyncio.Task[tuple[int, dict[str, Any]]] | None = None
        async with http.post(
            stack.url + "/v1/completions",
            headers={**H, "x-sim-stream-chunks": "6", "x-sim-service-ms": "1200"},
            json={},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                chunks += 1
                if chunks == 1:
                    second = asyncio.create_task(_post(http, stack))
                    await wait_for(
                        lambda: stack.plane.registry.view().pools[0].waiting == 1,
                        what="second request queued behind the stream",
                    )
                # Mid-stream, the slot is still leased and the other request waits.
                assert stack.plane.registry.view().leases == 1
                assert second is not None and not second.done()
        assert chunks == 7  # 6 events + [DONE]
        assert second is not None
        status, _ = await second
        assert status == 200
    await stack.wait_idle()
    assert stack.full_hits() == 0
    assert stack.replicas[0].stats().max_in_flight == 1


async def test_client_disconnect_mid_response_frees_the_slot(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, service_ms=50)
    await stack.wait_warm()
    replica = stack.replicas[0]
    async with client() as http:
        slow = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "10000"}))
        await wait_for(lambda: replica.stats().in_flight == 1, what="slow request running")
        slow.cancel()  # the client goes away mid-response
        started = time.perf_counter()
        await stack.wait_idle(timeout=5)
        freed_after = time.perf_counter() - started
        await wait_for(lambda: replica.stats().in_flight == 0, what="replica saw the abort")
        status, body = await _post(http, stack)
        assert status == 200, body
    print(f"\nslot freed {freed_after * 1e3:.1f} ms after the client left")
    assert stack.metric("warmroute_requests_total", outcome="client_disconnect") == 1
    assert stack.full_hits() == 0


async def test_client_disconnect_while_queued_leaves_no_lease(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, service_ms=50)
    await stack.wait_warm()
    replica = stack.replicas[0]
    async with client() as http:
        busy = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "800"}))
        await wait_for(lambda: replica.stats().in_flight == 1, what="first request running")
        queued = asyncio.create_task(_post(http, stack))
        pool = stack.plane.registry.pools["main"]
        await wait_for(lambda: len(pool.queue) == 1, what="second request queued")
        queued.cancel()
        await wait_for(lambda: len(pool.queue) == 0, what="waiter withdrawn")
        assert (await busy)[0] == 200
    await stack.wait_idle()
    assert replica.stats().received == 1  # the queued request never reached the replica
    assert pool.counters.waits_cancelled == 1


async def test_queue_timeout_full_queue_and_unknown_model(stack_factory: StackFactory) -> None:
    stack = await stack_factory(replicas=1, max_waiting=1, queue_timeout=0.5)
    await stack.wait_warm()
    replica = stack.replicas[0]
    async with client() as http:
        busy = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "3000"}))
        await wait_for(lambda: replica.stats().in_flight == 1, what="replica busy")
        waiting = asyncio.create_task(http.post(stack.url + "/v1/completions", headers=H, json={}))
        await wait_for(
            lambda: len(stack.plane.registry.pools["main"].queue) == 1, what="one waiting"
        )
        # The queue holds one: the next request is refused at once.
        status, body = await _post(http, stack)
        assert status == 429
        assert body["error"]["code"] == "queue_full"
        # The waiting one times out with 503 and Retry-After.
        resp = await waiting
        assert resp.status == 503
        assert int(resp.headers["retry-after"]) >= 1
        assert (await resp.json())["error"]["code"] == "queue_timeout"
        resp.release()
        # Unknown and missing models: JSON errors, nothing leased.
        async with http.post(
            stack.url + "/v1/completions", headers={"x-model": "nope"}, json={}
        ) as r:
            assert r.status == 404
            assert r.headers["content-type"] == "application/json"
            assert (await r.json())["error"]["code"] == "unknown_model"
        async with http.post(stack.url + "/v1/completions", json={}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "missing_model"
        busy.cancel()
    await stack.wait_idle()
    assert replica.stats().received == 1
    assert stack.metric("warmroute_requests_total", outcome="rejected_queue_full") == 1
    assert stack.metric("warmroute_requests_total", outcome="rejected_queue_timeout") == 1
    assert stack.metric("warmroute_requests_total", outcome="rejected_unknown_model") == 1


async def test_replica_errors_release_the_lease(stack_factory: StackFactory) -> None:
    dead = "127.0.0.1:1"  # nothing listens on port 1: connection refused
    extra = {"name": "broken", "models": ["broken-model"], "probe": None, "replicas": [dead]}
    stack = await stack_factory(replicas=1, extra_pool=extra)
    await stack.wait_warm(2)
    async with client() as http:
        status, _ = await _post(http, stack, **{"x-sim-status": "500"})
        assert status == 500
        async with http.post(
            stack.url + "/v1/completions", headers={"x-model": "broken-model"}, json={}
        ) as r:
            assert r.status == 503  # Envoy: upstream connect failure
    await stack.wait_idle()
    assert stack.metric("warmroute_requests_total", pool="main", outcome="upstream_error") == 1
    assert stack.metric("warmroute_requests_total", pool="broken", outcome="upstream_error") == 1
    assert stack.metric("warmroute_upstream_mismatch_total") == 0


async def test_lease_with_lost_end_is_reclaimed_at_its_deadline(
    stack_factory: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await stack_factory(
        replicas=1, max_request_seconds=0.5, lease_grace=0.2, expire_interval=0.05
    )
    await stack.wait_warm()
    lost: list[Any] = []
    # Lose every end-of-request entry, as if the access-log stream were broken.
    front_end = stack.plane.front_end
    assert isinstance(front_end, OwnEnvoy)
    monkeypatch.setattr(front_end.access_log, "finish", lost.append)
    async with client() as http:
        assert (await _post(http, stack))[0] == 200
        await wait_for(lambda: len(lost) == 1, what="the (lost) access-log entry")
        assert stack.plane.registry.view().leases == 1
        await stack.wait_idle(timeout=5)
        assert stack.metric("warmroute_leases_expired_total") == 1
        # The reclaimed slot serves the next request.
        assert (await _post(http, stack))[0] == 200
