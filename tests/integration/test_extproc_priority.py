"""Priority bands through the ext_proc service over real gRPC (no Envoy): the headers and
the model choose the band, a full queue displaces the newest lower-band waiter with a
429 ``displaced``, and freed slots go to the higher band first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.helpers import free_port, wait_for
from tests.integration.test_extproc_grpc import _headers
from warmroute.config import Config
from warmroute.envoy_names import DESTINATION_KEY, LB_NAMESPACE
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
                    "models": ["m", "chat"],
                    "probe": None,
                    "queue": {"max_waiting": 3, "timeout_seconds": 30},
                    "replicas": ["10.0.0.1:8000"],
                    "priority": {
                        "bands": [{"name": "interactive"}, {"name": "batch"}],
                        "header": "x-priority",
                        "models": {"chat": "interactive"},
                        "fairness": {"header": "x-tenant"},
                    },
                }
            ],
        }
    )
    cp = ControlPlane(cfg)
    await cp.start()
    await wait_for(lambda: cp.registry.view().pools[0].replicas != (), what="replica known")
    yield cp
    await cp.stop()


class _Call:
    def __init__(self, stub: ep_grpc.ExternalProcessorStub, request_id: str, **headers: str):
        self.request_id = request_id
        self.call = stub.Process(metadata=(("x-warmroute-pool", "p"),))
        self.headers = headers
        self.answer: asyncio.Task[ep.ProcessingResponse] | None = None

    async def start(self) -> None:
        await self.call.write(_headers(self.request_id, **self.headers))
        self.answer = asyncio.ensure_future(self.call.read())


async def test_bands_order_the_queue_and_a_full_queue_displaces_batch(
    plane: ControlPlane,
) -> None:
    pool = plane.registry.pools["p"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
        stub = ep_grpc.ExternalProcessorStub(ch)
        held = _Call(stub, "busy")
        await held.start()
        assert held.answer is not None
        assert (await held.answer).HasField("dynamic_metadata")
        calls = [
            _Call(stub, "b1", **{"x-tenant": "t1"}),  # no band header, model m: batch
            _Call(stub, "b2", **{"x-priority": "no-such-band"}),  # unknown: the default
            _Call(stub, "b3", **{"x-priority": "batch"}),
            _Call(stub, "i1", **{"x-priority": "interactive"}),  # full: displaces b3
            _Call(stub, "i2", **{"x-model": "chat"}),  # chat's band: displaces b2
        ]
        for n, c in enumerate(calls):
            await c.start()
            expected = min(n + 1, 3)  # from the fourth on, each displaces one

            def queued(expected: int = expected) -> bool:
                return len(pool.queue) == expected

            await wait_for(queued, what=f"{expected} queued")
        by_id = {c.request_id: c for c in calls}
        for displaced in ("b3", "b2"):
            task = by_id[displaced].answer
            assert task is not None
            imm = (await task).immediate_response
            assert imm.status.code == 429
            assert json.loads(imm.body)["error"]["code"] == "displaced"
            assert any(h.header.key == "retry-after" for h in imm.headers.set_headers)
        assert [w.request_id for w in pool.queue] == ["b1", "i1", "i2"]
        assert pool.counters.displaced == 2
        # Each release hands the slot to the next in band order: i1, i2, then b1.
        order = []
        for _ in range(3):
            (lease,) = plane.registry.leases.values()
            lease.release()
            await wait_for(lambda: len(plane.registry.leases) == 1, what="next granted")
            (granted,) = plane.registry.leases.values()
            order.append(granted.request_id)
        assert order == ["i1", "i2", "b1"]
        for c in calls:
            if c.request_id in order:
                assert c.answer is not None
                resp = await c.answer
                pinned = resp.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
                assert pinned[DESTINATION_KEY].string_value == "10.0.0.1:8000"
        (lease,) = plane.registry.leases.values()
        lease.release()
        counted = plane.metrics.requests.labels("p", "rejected_displaced")._value.get()
        assert counted == 2
        for c in calls:
            c.call.cancel()


async def test_each_band_times_out_on_its_own_timeout() -> None:
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
                    "queue": {"max_waiting": 10, "timeout_seconds": 60},
                    "replicas": ["10.0.0.1:8000"],
                    "priority": {
                        "bands": [
                            {"name": "interactive", "timeout_seconds": 0.2},
                            {"name": "batch"},
                        ],
                        "header": "x-priority",
                    },
                }
            ],
        }
    )
    plane = ControlPlane(cfg)
    await plane.start()
    try:
        pool = plane.registry.pools["p"]
        await wait_for(lambda: pool.replicas.get("10.0.0.1:8000") is not None, what="replica")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            stub = ep_grpc.ExternalProcessorStub(ch)
            calls = [_Call(stub, "busy"), _Call(stub, "b"), _Call(stub, "i")]
            calls[2].headers = {"x-priority": "interactive"}
            await calls[0].start()
            assert calls[0].answer is not None
            assert (await calls[0].answer).HasField("dynamic_metadata")  # holds the slot
            await calls[1].start()
            await wait_for(lambda: len(pool.queue) == 1, what="batch queued")
            await calls[2].start()
            task = calls[2].answer
            assert task is not None
            imm = (await task).immediate_response
            assert imm.status.code == 503
            error = json.loads(imm.body)["error"]
            assert error["code"] == "queue_timeout" and "0.2s" in error["message"]
            # The batch request waits on: its band's timeout is the pool's 60 s.
            assert [w.request_id for w in pool.queue] == ["b"]
            assert calls[1].answer is not None and not calls[1].answer.done()
            for c in calls:
                c.call.cancel()
    finally:
        await plane.stop()
