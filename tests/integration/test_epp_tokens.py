"""Token-aware slots in endpoint-picker mode, over real gRPC with this test playing the
gateway: the cost is read from the body the picker buffers, reserved at the lease and
refunded at the response's end; a request over the budget is refused without a lease."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.helpers import free_port, wait_for
from tests.integration.test_epp_protocol import (
    MODEL,
    _destination,
    _error,
    _finish_response,
    _send_request,
)
from warmroute.config import Config
from warmroute.server import ControlPlane

REPLICA = "10.0.0.1:8000"
BUDGET = 1000


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
                    "models": [MODEL],
                    "slots": 4,
                    "probe": None,
                    "replicas": [REPLICA],
                    "tokens": {"capacity": BUDGET, "default_max_tokens": 10},
                }
            ],
            "epp": {"enabled": True, "tls": False},
        }
    )
    cp = ControlPlane(cfg)
    await cp.start()
    try:
        await wait_for(lambda: cp.registry.capacity(REPLICA) is not None, what="replica known")
        yield cp
    finally:
        await cp.stop()


def _body(max_tokens: int) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": max_tokens}).encode()


async def test_the_buffered_body_prices_the_lease(plane: ControlPlane) -> None:
    capacity = plane.registry.capacity(REPLICA)
    assert capacity is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        stub = ep_grpc.ExternalProcessorStub(ch)
        call = stub.Process()
        first, _ = await _send_request(call, "r1", _body(400))
        assert _destination(first)[0] == REPLICA
        assert capacity.tokens_leased == math.ceil(len(_body(400)) / 4) + 400

        refused = stub.Process()
        answer, _ = await _send_request(refused, "r2", _body(BUDGET))
        assert _error(answer) == (400, "request_too_large_for_pool")
        assert plane.registry.view().leases == 1  # only r1's

        await _finish_response(call)
        await wait_for(lambda: plane.registry.view().leases == 0, what="r1's lease ends")
        assert (capacity.tokens_leased, capacity.reserved) == (0, {})
        call.cancel()
        refused.cancel()
