"""Endpoint-picker mode refuses at once, like ext_proc, a request that could only time out
(``queue.reject_when_unmeetable``): real gRPC, the pool's clock injected so the service
time it learns is exact."""

from __future__ import annotations

import asyncio

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.helpers import free_port, wait_for
from tests.integration.test_epp_protocol import (
    MODEL,
    _destination,
    _error,
    _finish_response,
    _prompt,
    _send_request,
)
from warmroute.config import Config
from warmroute.server import ControlPlane

REPLICA = "10.0.0.1:8000"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_wait_that_cannot_be_met_is_refused_at_once() -> None:
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
                    "models": [MODEL],
                    "probe": None,
                    "queue": {"timeout_seconds": 30, "reject_when_unmeetable": True},
                    "replicas": [REPLICA],
                }
            ],
            "epp": {"enabled": True, "tls": False},
        }
    )
    clock = Clock()
    plane = ControlPlane(cfg, clock=clock)
    await plane.start()
    try:
        pool = plane.registry.pools["p"]
        await wait_for(lambda: pool.replicas.get(REPLICA) is not None, what="replica known")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            stub = ep_grpc.ExternalProcessorStub(ch)
            # One request of 20 s (pool clock): the service time the pool learns.
            first = stub.Process()
            answer, _ = await _send_request(first, "learn", _prompt(100))
            assert _destination(answer)[0] == REPLICA
            clock.now += 20
            await _finish_response(first)
            await wait_for(lambda: plane.registry.view().leases == 0, what="first ended")

            holder = stub.Process()
            answer, _ = await _send_request(holder, "hold", _prompt(100))
            assert _destination(answer)[0] == REPLICA
            # Predicted 20 s, within the 30 s timeout: it waits.
            queued_call = stub.Process()
            queued = asyncio.create_task(_send_request(queued_call, "queued", _prompt(100)))
            await wait_for(lambda: len(pool.queue) == 1, what="one request queued")
            # Predicted 40 s, and the pool cannot scale: refused now, with that wait.
            late = stub.Process()
            answer, _ = await _send_request(late, "late", _prompt(100))
            assert _error(answer) == (503, "queue_timeout")
            retry = {
                h.header.key: h.header.raw_value
                for h in answer.immediate_response.headers.set_headers
            }
            assert int(retry["retry-after"]) >= 39, retry
            assert [w.request_id for w in pool.queue] == ["queued"]  # it never queued

            await _finish_response(holder)
            answer, _ = await asyncio.wait_for(queued, 10)
            assert _destination(answer)[0] == REPLICA
            await _finish_response(queued_call)
            await wait_for(lambda: plane.registry.view().leases == 0, what="leases released")
    finally:
        await plane.stop()
