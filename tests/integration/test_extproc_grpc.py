"""The ext_proc and access-log services over real gRPC (no Envoy): protocol details."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_names import DESTINATION_KEY, LB_NAMESPACE, METADATA_NAMESPACE
from warmroute.server import ControlPlane


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cfg = Config.model_validate(
        {
            "control": {
                "start_fence": False,
                "grpc": f"127.0.0.1:{free_port()}",
                "admin": f"127.0.0.1:{free_port()}",
            },
            "pools": [
                {
                    "name": "p",
                    "models": ["m"],
                    "probe": None,
                    "queue": {"max_waiting": 2, "timeout_seconds": 5},
                    "replicas": ["10.0.0.1:8000"],
                }
            ],
        }
    )
    cp = ControlPlane(cfg)
    await cp.start()
    await wait_for(lambda: cp.registry.view().pools[0].replicas != (), what="replica known")
    yield cp
    await cp.stop()


def _headers(request_id: str, **extra: str) -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    hs = req.request_headers.headers.headers
    for k, v in {":path": "/v1/x", "x-request-id": request_id, **extra}.items():
        hs.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    return req


async def _process(
    stub: ep_grpc.ExternalProcessorStub, req: ep.ProcessingRequest, pool: str | None = "p"
) -> ep.ProcessingResponse:
    metadata = (("x-warmroute-pool", pool),) if pool else ()
    call = stub.Process(metadata=metadata)
    await call.write(req)
    resp = await call.read()
    await call.done_writing()
    return resp


async def test_lease_metadata_and_release_by_access_log(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        stub = ep_grpc.ExternalProcessorStub(ch)
        resp = await _process(stub, _headers("r1", **{DESTINATION_KEY: "10.9.9.9:1"}))
        md = resp.dynamic_metadata.fields
        assert md[LB_NAMESPACE].struct_value.fields[DESTINATION_KEY].string_value == (
            "10.0.0.1:8000"
        )
        lease_id = md[METADATA_NAMESPACE].struct_value.fields["lease"].string_value
        assert len(lease_id) == 32
        removed = resp.request_headers.response.header_mutation.remove_headers
        assert DESTINATION_KEY in removed
        assert plane.registry.lease(lease_id) is not None

        # An entry of another request, without our metadata, releases nothing.
        als = als_pb2_grpc.AccessLogServiceStub(ch)
        entry = accesslog_pb2.HTTPAccessLogEntry()
        entry.request.request_id = "r0"
        entry.response.response_code.value = 200
        msg = als_pb2.StreamAccessLogsMessage()
        msg.identifier.node.id = "test-node"
        msg.http_logs.log_entry.append(entry)
        tagged = accesslog_pb2.HTTPAccessLogEntry()
        tagged.CopyFrom(entry)
        ours = tagged.common_properties.metadata.filter_metadata[METADATA_NAMESPACE]
        ours.fields["lease"].string_value = lease_id
        sa = tagged.common_properties.upstream_remote_address.socket_address
        sa.address, sa.port_value = "10.0.0.1", 8000

        async def send() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            yield msg
            assert plane.registry.lease(lease_id) is not None
            second = als_pb2.StreamAccessLogsMessage()
            second.http_logs.log_entry.append(tagged)
            second.http_logs.log_entry.append(tagged)  # a duplicate entry is harmless
            yield second

        await als.StreamAccessLogs(send())
        assert plane.registry.lease(lease_id) is None
        assert plane.registry.view().leases == 0
        assert plane.metrics.upstream_mismatch.labels("p")._value.get() == 0
        assert plane.metrics.unknown_lease._value.get() == 1


async def test_rejections_are_json_immediate_responses(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        stub = ep_grpc.ExternalProcessorStub(ch)
        resp = await _process(stub, _headers("r2", **{"x-model": "nope"}), pool=None)
        assert resp.immediate_response.status.code == 404
        assert b'"unknown_model"' in resp.immediate_response.body
        resp = await _process(stub, _headers("r3"), pool=None)
        assert resp.immediate_response.status.code == 400
        resp = await _process(stub, _headers("r4"), pool="ghost")
        assert resp.immediate_response.status.code == 404


async def test_stream_reset_while_waiting_withdraws_the_waiter(plane: ControlPlane) -> None:
    pool = plane.registry.pools["p"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        stub = ep_grpc.ExternalProcessorStub(ch)
        held = await _process(stub, _headers("busy"))
        assert held.HasField("dynamic_metadata")
        call = stub.Process(metadata=(("x-warmroute-pool", "p"),))
        await call.write(_headers("waiter"))
        await wait_for(lambda: len(pool.queue) == 1, what="request queued")
        call.cancel()  # Envoy resets the stream: the client went away
        await wait_for(lambda: len(pool.queue) == 0, what="waiter withdrawn")
        # A third request fills the queue bound (2) without the withdrawn one counting.
        calls = [stub.Process(metadata=(("x-warmroute-pool", "p"),)) for _ in range(3)]
        for i, c in enumerate(calls[:2]):
            await c.write(_headers(f"q{i}"))
            await wait_for(lambda n=i + 1: len(pool.queue) == n, what=f"{i + 1} queued")
        await calls[2].write(_headers("q2"))
        over = await calls[2].read()
        assert over.immediate_response.status.code == 429
        for c in calls[:2]:
            c.cancel()
        await wait_for(lambda: len(pool.queue) == 0, what="queue empty")
        (lease,) = plane.registry.leases.values()
        lease.release()
        assert plane.registry.view().leases == 0


async def test_entry_without_our_metadata_releases_the_lease_of_its_request(
    plane: ControlPlane,
) -> None:
    """The client left after warmroute answered but before Envoy applied the answer: the
    entry carries no metadata, but Envoy's request id still names the lease."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        resp = await _process(ep_grpc.ExternalProcessorStub(ch), _headers("envoy-rid-7"))
        lease_id = (
            resp.dynamic_metadata.fields[METADATA_NAMESPACE]
            .struct_value.fields["lease"]
            .string_value
        )
        assert plane.registry.lease(lease_id) is not None
        other = accesslog_pb2.HTTPAccessLogEntry()
        other.request.request_id = "some-other-request"
        orphan = accesslog_pb2.HTTPAccessLogEntry()
        orphan.request.request_id = "envoy-rid-7"
        msg = als_pb2.StreamAccessLogsMessage()
        msg.identifier.node.id = "test-node"
        msg.http_logs.log_entry.extend([other])

        async def send() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            yield msg
            assert plane.registry.lease(lease_id) is not None  # another request's end
            last = als_pb2.StreamAccessLogsMessage()
            last.http_logs.log_entry.append(orphan)
            yield last

        await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(send())
        assert plane.registry.lease(lease_id) is None
        assert plane.registry.view().leases == 0
