"""Outlier detection in endpoint picker mode, over real gRPC with this test as the gateway:
what the response phase shows decides how a request counts for its replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.e2e.stack import metric_total
from tests.helpers import free_port, wait_for
from tests.integration.test_epp_protocol import (
    MODEL,
    REPLICAS,
    _destination,
    _prompt,
    _send_request,
)
from warmroute.config import Config
from warmroute.server import ControlPlane


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cfg = Config.model_validate(
        {
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "pools": [
                {
                    "name": "p",
                    "models": [MODEL],
                    "probe": None,
                    "replicas": REPLICAS,
                    "outlier_detection": {
                        "consecutive_failures": 2,
                        "base_ejection_seconds": 60,
                        "max_ejection_seconds": 60,
                        "full_backoff_seconds": 60,
                    },
                }
            ],
            "epp": {"enabled": True, "tls": False},
        }
    )
    cp = ControlPlane(cfg)
    await cp.start()
    pool = cp.registry.pools["p"]
    await wait_for(lambda: len(pool.addresses()) == len(REPLICAS), what="replicas known")
    yield cp
    await cp.stop()


def _response(status: int, *, upstream: bool) -> ep.ProcessingRequest:
    """Response headers as Envoy hands them to the picker: a model server's answer carries
    ``date`` and ``server``; Envoy's own reply (connection refused...) does not, yet."""
    req = ep.ProcessingRequest()
    req.response_headers.end_of_stream = True
    fields = {":status": str(status), "content-type": "text/plain", "content-length": "0"}
    if upstream:
        fields |= {"date": "Tue, 08 Dec 2026 01:01:59 GMT", "server": "uvicorn"}
    for k, v in fields.items():
        req.response_headers.headers.headers.append(
            base_pb2.HeaderValue(key=k, raw_value=v.encode())
        )
    return req


async def _routed(stub: Any, request_id: str, **headers: Any) -> tuple[Any, str]:
    call = stub.Process()
    first, _ = await _send_request(call, request_id, _prompt(200), **headers)
    address, _, _ = _destination(first)
    return call, address


async def _answer(call: Any, status: int, *, upstream: bool) -> None:
    await call.write(_response(status, upstream=upstream))
    assert (await call.read()).HasField("response_headers")
    call.cancel()


def _outlier(plane: ControlPlane, address: str) -> Any:
    (pool,) = plane.registry.view().pools
    (replica,) = [r for r in pool.replicas if r.address == address]
    return replica.outlier


async def test_failures_seen_in_the_response_phase_eject_and_full_answers_back_off(
    plane: ControlPlane,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)
        # The replica's own 503: it is full. Backed off, not a failure.
        call, full = await _routed(stub, "r1")
        await _answer(call, 503, upstream=True)
        assert _outlier(plane, full).backoff_seconds_left > 59
        assert _outlier(plane, full).consecutive_failures == 0
        # Envoy's own 503 for another replica (no date, no server): a failure.
        call, broken = await _routed(stub, "r2")
        assert broken != full  # the full one is skipped
        await _answer(call, 503, upstream=False)
        assert _outlier(plane, broken).consecutive_failures == 1
        # Envoy's own 504 (its route timeout): the second failure in a row ejects.
        call, again = await _routed(stub, "r3", hint=[broken])
        assert again == broken
        await _answer(call, 504, upstream=False)
        assert _outlier(plane, broken).ejected
        # The third replica takes what comes; a 404 from the replica is a success.
        call, third = await _routed(stub, "r4")
        assert third not in (full, broken)
        await _answer(call, 404, upstream=True)
        assert _outlier(plane, third).consecutive_failures == 0
        assert not _outlier(plane, third).ejected
    (pool,) = plane.registry.view().pools
    assert (pool.ejections, pool.ejected, pool.backoffs) == (1, 1, 1)
    assert metric_total(plane, "warmroute_replica_ejections_total", replica=broken) == 1
    assert metric_total(plane, "warmroute_replica_ejected", replica=broken) == 1
    assert metric_total(plane, "warmroute_replica_full_answers_total", replica=full) == 1
    assert plane.registry.view().leases == 0


async def test_a_stream_ending_before_the_response_counts_for_nothing(
    plane: ControlPlane,
) -> None:
    # What Envoy does when the client leaves before the response (measured: it ends or
    # resets the stream with no response phase; a failure upstream comes as its own 5xx).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as channel:
        stub = ep_grpc.ExternalProcessorStub(channel)
        for i in range(6):
            call, _ = await _routed(stub, f"gone{i}", hint=[REPLICAS[0]])
            if i % 2:
                call.cancel()
            else:
                await call.done_writing()
            await wait_for(lambda: plane.registry.view().leases == 0, what="released")
    assert _outlier(plane, REPLICAS[0]) is None  # nothing was counted
    (pool,) = plane.registry.view().pools
    assert pool.ejections == 0
    assert metric_total(plane, "warmroute_requests_total", outcome="client_disconnect") == 6
