"""The load-report service (LRS) over real gRPC, a Python client in Envoy's place: what it
asks of Envoy, how a start's fence lifts on a complete round of reports, and how a lease
whose end was lost is reclaimed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc

from tests.e2e.stack import metric_total
from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.server import ControlPlane
from warmroute.state import EndReason
from warmroute.state.ask import Ask

A = "10.0.0.1:8000"
B = "10.0.0.2:8000"


def _config(start_fence: bool) -> Config:
    return Config.model_validate(
        {
            "control": {
                "start_fence": start_fence,
                "grpc": f"127.0.0.1:{free_port()}",
                "admin": f"127.0.0.1:{free_port()}",
                "load_report_interval_seconds": 0.2,
            },
            "pools": [
                {
                    "name": "p",
                    "models": ["m"],
                    "probe": None,
                    # Never answers (nothing listens there); sets how old a lease must be
                    # before a report may call it lost.
                    "metrics": {"interval_seconds": 60, "reconcile_after_seconds": 0.3},
                    "replicas": [A, B],
                }
            ],
        }
    )


@pytest.fixture
async def planes() -> AsyncIterator[list[ControlPlane]]:
    started: list[ControlPlane] = []
    yield started
    for plane in started:
        await plane.stop()


async def _start(planes: list[ControlPlane], *, start_fence: bool) -> ControlPlane:
    plane = ControlPlane(_config(start_fence))
    planes.append(plane)
    await plane.start()
    await wait_for(lambda: len(plane.registry.view().pools[0].replicas) == 2, what="replicas")
    return plane


class FakeEnvoy:
    """One LRS stream, as Envoy opens it: node first, then a report per interval."""

    def __init__(self, plane: ControlPlane, node: str = "envoy-0") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}")
        self.call = lrs_pb2_grpc.LoadReportingServiceStub(self.channel).StreamLoadStats()
        self.node = node

    async def hello(self) -> lrs_pb2.LoadStatsResponse:
        await self.call.write(lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=self.node)))
        response: lrs_pb2.LoadStatsResponse = await self.call.read()
        return response

    async def report(self, **in_progress: int) -> None:
        endpoints = []
        for name, address in (("a", A), ("b", B)):
            host, port = address.split(":")
            endpoints.append(
                load_report_pb2.UpstreamEndpointStats(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=host, port_value=int(port))
                    ),
                    total_requests_in_progress=in_progress.get(name, 0),
                )
            )
        stats = load_report_pb2.ClusterStats(
            cluster_name="warmroute_pool_p",
            upstream_locality_stats=[
                load_report_pb2.UpstreamLocalityStats(upstream_endpoint_stats=endpoints)
            ],
        )
        await self.call.write(lrs_pb2.LoadStatsRequest(cluster_stats=[stats]))

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def test_envoy_is_asked_for_every_cluster_per_endpoint_at_the_configured_interval(
    planes: list[ControlPlane],
) -> None:
    plane = await _start(planes, start_fence=False)
    envoy = FakeEnvoy(plane)
    response = await envoy.hello()
    assert response.send_all_clusters
    assert response.report_endpoint_granularity
    assert response.load_reporting_interval.ToMilliseconds() == 200
    await envoy.close()


async def test_the_start_fence_lifts_when_every_envoy_reported(
    planes: list[ControlPlane],
) -> None:
    plane = await _start(planes, start_fence=True)
    pool = plane.registry.pools["p"]
    assert plane.registry.inflight.fencing
    assert pool.try_acquire(Ask("r0")) is None  # every slot held
    first, second = FakeEnvoy(plane, "envoy-0"), FakeEnvoy(plane, "envoy-1")
    await first.hello()
    await second.hello()
    await first.report(a=1)
    await wait_for(lambda: metric_total(plane, "warmroute_envoy_load_reports_total") == 1)
    assert plane.registry.inflight.fencing  # envoy-1 has not reported yet
    await second.report()
    await wait_for(lambda: not plane.registry.inflight.fencing, what="fence lifted")
    assert plane.registry.view().fence.lifted == {"reports": 2}
    # One request of a previous process still runs on A; B is free.
    assert (pool.replicas[A].free, pool.replicas[B].free) == (0, 1)
    await first.close()
    await second.close()


async def test_a_lease_no_envoy_counts_is_reclaimed_as_lost(planes: list[ControlPlane]) -> None:
    plane = await _start(planes, start_fence=False)
    lease = plane.registry.pools["p"].try_acquire(Ask("r1"))
    assert lease is not None
    envoy = FakeEnvoy(plane)
    await envoy.hello()

    async def reported_gone() -> bool:
        await envoy.report()  # Envoy counts nothing anywhere: its end was lost
        return lease.ended is not None

    # One report per poll, spaced as Envoy's interval would space them.
    await wait_for(reported_gone, timeout=10, interval=0.05, what="the lost lease reclaimed")
    assert lease.ended is EndReason.RECONCILED
    assert metric_total(plane, "warmroute_lease_discrepancies_total", kind="lost") == 1
    assert plane.registry.view().leases == 0
    await envoy.close()
