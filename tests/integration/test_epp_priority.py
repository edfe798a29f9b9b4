"""Endpoint-picker mode honours the same priority headers as own-Envoy mode (real gRPC):
a higher band's request displaces a lower band's waiter from a full queue (429
``displaced``) and takes the next free slot."""

from __future__ import annotations

import asyncio
from typing import Any

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


async def test_interactive_displaces_batch_in_a_full_queue() -> None:
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
                    "queue": {"max_waiting": 1, "timeout_seconds": 30},
                    "replicas": [REPLICA],
                    "priority": {
                        "bands": [{"name": "interactive"}, {"name": "batch"}],
                        "header": "x-priority",
                        "fairness": {"header": "x-tenant"},
                    },
                }
            ],
            "epp": {"enabled": True, "tls": False},
        }
    )
    plane = ControlPlane(cfg)
    await plane.start()
    try:
        pool = plane.registry.pools["p"]
        await wait_for(lambda: pool.replicas.get(REPLICA) is not None, what="replica known")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            stub = ep_grpc.ExternalProcessorStub(ch)
            holder = stub.Process()
            first, _ = await _send_request(holder, "hold", _prompt(300))
            assert _destination(first)[0] == REPLICA
            tenant: dict[str, Any] = {"x-tenant": "t1"}
            interactive: dict[str, Any] = {"x-priority": "interactive"}
            batch_call = stub.Process()
            batch = asyncio.create_task(_send_request(batch_call, "batch", _prompt(300), **tenant))
            await wait_for(lambda: len(pool.queue) == 1, what="batch queued")
            urgent_call = stub.Process()
            urgent = asyncio.create_task(
                _send_request(urgent_call, "urgent", _prompt(300), **interactive)
            )
            answer, _ = await asyncio.wait_for(batch, 10)
            assert _error(answer) == (429, "displaced")
            assert [w.request_id for w in pool.queue] == ["urgent"]
            await _finish_response(holder)
            answer, echoed = await asyncio.wait_for(urgent, 10)
            assert _destination(answer)[0] == REPLICA and echoed == _prompt(300)
            assert pool.counters.displaced == 1
            for call in (urgent_call, batch_call):
                call.cancel()
            await wait_for(lambda: plane.registry.view().leases == 0, what="leases released")
    finally:
        await plane.stop()
