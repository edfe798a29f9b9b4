"""A refused request leaves exactly one INFO line naming its id, pool and outcome.

Under overload every request may be refused: a WARNING per request would flood the logs,
and the ``warmroute_requests_total`` outcome counters are what alert. Real gRPC (ext_proc
and the endpoint picker), no Envoy: this test plays Envoy's side of the streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.server import ControlPlane

REPLICA = "10.0.0.1:8000"


def _config(**extra: Any) -> Config:
    return Config.model_validate(
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
                    "slots": 1,
                    "probe": None,
                    "queue": {"max_waiting": 1, "timeout_seconds": 0.3},
                    "replicas": [REPLICA],
                }
            ],
            **extra,
        }
    )


@dataclass
class Side:
    """The control plane and a stub of its ext_proc service, as Envoy would call it."""

    plane: ControlPlane
    stub: ep_grpc.ExternalProcessorStub

    def waiting(self) -> int:
        return sum(p.waiting for p in self.plane.registry.view().pools)


@asynccontextmanager
async def _started(cfg: Config) -> AsyncIterator[Side]:
    plane = ControlPlane(cfg)
    try:
        await plane.start()
        await wait_for(lambda: plane.registry.view().pools[0].replicas != (), what="replica")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as ch:
            yield Side(plane, ep_grpc.ExternalProcessorStub(ch))
    finally:
        await plane.stop()


@pytest.fixture
async def extproc() -> AsyncIterator[Side]:
    async with _started(_config()) as side:
        yield side


@pytest.fixture
async def picker() -> AsyncIterator[Side]:
    async with _started(_config(epp={"enabled": True, "tls": False})) as side:
        yield side


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="warmroute")
    return caplog


def _headers(
    request_id: str, extra: dict[str, str] | None = None, end_of_stream: bool = True
) -> ep.ProcessingRequest:
    req = ep.ProcessingRequest()
    req.request_headers.end_of_stream = end_of_stream
    hs = req.request_headers.headers.headers
    fields = {":method": "POST", ":path": "/v1/x", "x-request-id": request_id, **(extra or {})}
    for k, v in fields.items():
        hs.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    return req


async def _ask(
    stub: ep_grpc.ExternalProcessorStub, request_id: str, pool: str | None = "p", **headers: str
) -> ep.ProcessingResponse:
    """One ext_proc request-headers exchange, as Envoy's routed ext_proc filter sends it."""
    call = stub.Process(metadata=(("x-warmroute-pool", pool),) if pool else ())
    await call.write(_headers(request_id, headers))
    resp: ep.ProcessingResponse = await call.read()
    await call.done_writing()
    return resp


def _code(resp: ep.ProcessingResponse) -> str:
    return str(json.loads(resp.immediate_response.body)["error"]["code"])


def _assert_one_info_line(
    logs: pytest.LogCaptureFixture, request_id: str, pool: str, outcome: str
) -> None:
    """Exactly one line at INFO or above names the request, and it is that INFO line."""
    lines = [
        r
        for r in logs.records
        if r.levelno >= logging.INFO and f"request {request_id} " in r.getMessage()
    ]
    assert [r.levelno for r in lines] == [logging.INFO], [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith(f"request {request_id} pool {pool} {outcome}: ")


def _assert_nothing_louder_than_info(logs: pytest.LogCaptureFixture) -> None:
    loud = [r.getMessage() for r in logs.records if r.levelno > logging.INFO]
    assert loud == []


async def test_extproc_unknown_and_missing_model(
    extproc: Side, logs: pytest.LogCaptureFixture
) -> None:
    resp = await _ask(extproc.stub, "r-unknown", pool=None, **{"x-model": "nope"})
    assert _code(resp) == "unknown_model"
    resp = await _ask(extproc.stub, "r-missing", pool=None)
    assert _code(resp) == "missing_model"
    _assert_one_info_line(logs, "r-unknown", "none", "rejected_unknown_model")
    _assert_one_info_line(logs, "r-missing", "none", "rejected_missing_model")
    _assert_nothing_louder_than_info(logs)


async def test_extproc_queue_full_and_queue_timeout(
    extproc: Side, logs: pytest.LogCaptureFixture
) -> None:
    held = await _ask(extproc.stub, "r-hold", **{"x-model": "m"})  # the only slot, kept
    assert not held.HasField("immediate_response")
    waiting = asyncio.create_task(_ask(extproc.stub, "r-wait", **{"x-model": "m"}))
    await wait_for(lambda: extproc.waiting() == 1, what="r-wait queued")  # the queue holds one
    resp = await _ask(extproc.stub, "r-full", **{"x-model": "m"})
    assert _code(resp) == "queue_full"
    assert _code(await waiting) == "queue_timeout"
    _assert_one_info_line(logs, "r-full", "p", "rejected_queue_full")
    _assert_one_info_line(logs, "r-wait", "p", "rejected_queue_timeout")
    _assert_nothing_louder_than_info(logs)


async def test_picker_bad_body(picker: Side, logs: pytest.LogCaptureFixture) -> None:
    call = picker.stub.Process()
    await call.write(_headers("r-bad", end_of_stream=False))
    body = ep.ProcessingRequest()
    body.request_body.body = b"{oops"
    body.request_body.end_of_stream = True
    await call.write(body)
    resp: ep.ProcessingResponse = await call.read()
    assert _code(resp) == "invalid_body"
    assert await call.read() is grpc.aio.EOF
    _assert_one_info_line(logs, "r-bad", "p", "rejected_invalid_body")
    _assert_nothing_louder_than_info(logs)
