"""warmroute as the endpoint picker of a gateway-owned Envoy (real Envoy, real gRPC, TLS).

Envoy runs the Gateway API Inference Extension's own picker config (tests/e2e/fixtures/
epp-envoy.yaml): bodies FULL_DUPLEX_STREAMED through the picker, routing by the
``x-gateway-destination-endpoint`` header into an ORIGINAL_DST cluster, gRPC health checks
of the picker, TLS to it (warmroute's self-signed certificate). No ADS, no access log: the
lease ends with the ext_proc stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import string
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.envoy_admin import get_json
from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, SimFactory, client
from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica

FIXTURE = Path(__file__).parent / "fixtures" / "epp-envoy.yaml"
DECISION_LOGGER = "warmroute.director.director"  # one DEBUG line per decision


def gateway_bootstrap(listen_port: int, admin_port: int, picker_port: int) -> str:
    """The fixture with its ports filled in, as JSON (what EnvoyProcess writes)."""
    text = string.Template(FIXTURE.read_text()).substitute(
        LISTEN_PORT=listen_port, ADMIN_PORT=admin_port, PICKER_PORT=picker_port
    )
    return json.dumps(yaml.safe_load(text))


@dataclass
class EppStack:
    plane: ControlPlane
    envoy: EnvoyProcess
    replicas: list[SimReplica]
    url: str

    def leases(self) -> int:
        return self.plane.registry.view().leases

    def waiting(self) -> int:
        return sum(p.waiting for p in self.plane.registry.view().pools)

    def sim_in_flight(self) -> int:
        return sum(r.stats().in_flight for r in self.replicas)

    async def quiescent(self) -> None:
        """No lease, no waiter, nothing running in any replica; no replica ever overfull."""
        await wait_for(
            lambda: self.leases() == 0 and self.waiting() == 0 and self.sim_in_flight() == 0,
            what="no lease, no waiter, no request in a replica",
        )
        for r in self.replicas:
            stats = r.stats()
            assert stats.received_while_full == 0, r.address
            assert stats.max_in_flight <= stats.slots, r.address


async def start_epp_stack(
    sims: SimFactory,
    planes: PlaneFactory,
    envoys: EnvoyFactory,
    replicas: int = 3,
    slots: int = 1,
) -> EppStack:
    """Replicas, warmroute as the picker, the gateway's Envoy; the factories stop them."""
    started = [await sims(slots=slots, service_ms=50.0, seed=i) for i in range(replicas)]
    picker_port, listen_port, admin_port = free_port(), free_port(), free_port()
    cfg = Config.model_validate(
        {
            "control": {
                "grpc": f"127.0.0.1:{picker_port}",
                "admin": f"127.0.0.1:{free_port()}",
            },
            "pools": [
                {
                    "name": "main",
                    "models": [MODEL],
                    "slots": slots,
                    "probe": {"path": "/health", "interval_seconds": 0.05},
                    "replicas": [sim.address for sim in started],
                }
            ],
            "epp": {"enabled": True},  # TLS on: a self-signed certificate
        }
    )
    plane = await planes(cfg)
    envoy = await envoys(
        gateway_bootstrap(listen_port, admin_port, picker_port), f"127.0.0.1:{admin_port}"
    )
    await wait_for(lambda: _picker_healthy(envoy.admin), what="picker healthy in Envoy")
    await wait_for(
        lambda: sum(r.phase == "warm" for r in plane.registry.view().pools[0].replicas) == replicas,
        what="replicas warm",
    )
    return EppStack(plane, envoy, started, f"http://127.0.0.1:{listen_port}")


async def _picker_healthy(admin: str) -> bool:
    data = await get_json(admin, "/clusters?format=json")
    for cluster in data.get("cluster_statuses", []):
        if cluster["name"] == "ext_proc":
            hosts = cluster.get("host_statuses", [])
            return bool(hosts) and not hosts[0]["health_status"].get("failed_active_health_check")
    return False


@pytest.fixture
async def stack(
    sim_factory: SimFactory, plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> EppStack:
    return await start_epp_stack(sim_factory, plane_factory, envoy_factory)


def _body(prompt_bytes: int, **extra: Any) -> bytes:
    prompt = os.urandom(prompt_bytes // 2).hex()
    return json.dumps({"model": MODEL, "prompt": prompt, **extra}).encode()


async def test_body_model_reaches_the_leased_replica_whole(
    stack: EppStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=DECISION_LOGGER)
    bodies = [_body(size) for size in (1_000, 200_000, 300_000) for _ in range(4)]

    async def send(http: aiohttp.ClientSession, body: bytes) -> int:
        headers = {
            "content-type": "application/json",
            "x-sim-service-ms": "50",
            # A client naming a replica itself is overruled: the picker overwrites it.
            "x-gateway-destination-endpoint": "127.0.0.1:1",
        }
        async with http.post(f"{stack.url}/v1/completions", data=body, headers=headers) as r:
            await r.read()
            return r.status

    async with client() as http:  # 12 at once on 3 one-slot replicas: most of them queue
        statuses = await asyncio.gather(*(send(http, b) for b in bodies))
    assert statuses == [200] * len(bodies)
    await stack.quiescent()

    leased = {  # request id -> replica, from the director's DEBUG line per decision
        r.args[0]: r.args[1]
        for r in caplog.records
        if r.name == DECISION_LOGGER and isinstance(r.args, tuple) and "->" in r.msg
    }
    got = {
        (e.body_sha256, e.body_bytes): (replica.address, e.request_id)
        for replica in stack.replicas
        for e in replica.received()
    }
    for replica in stack.replicas:
        for e in replica.received():
            assert e.headers["x-gateway-destination-endpoint"] == replica.address
    for body in bodies:
        key = (hashlib.sha256(body).hexdigest(), len(body))
        assert key in got, "a body arrived changed or not at all"
        address, request_id = got[key]
        assert leased[request_id] == address
    assert sum(r.stats().received for r in stack.replicas) == len(bodies)


async def test_sse_stream_passes_whole_and_holds_its_lease(stack: EppStack) -> None:
    body = _body(1000, stream=True)
    headers = {"x-sim-stream-chunks": "20", "x-sim-service-ms": "600"}
    async with client() as http:
        direct = f"http://{stack.replicas[0].address}/v1/completions"
        async with http.post(direct, data=body, headers=headers) as r:
            expected = (await r.read()).count(b"data: ")
        async with http.post(f"{stack.url}/v1/completions", data=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            first = await r.content.readline()
            assert first.startswith(b"data: ")
            assert stack.leases() == 1  # mid-stream: the slot is still leased
            rest = await r.read()
    events = (first + rest).count(b"data: ")
    assert events == expected and rest.endswith(b"data: [DONE]\n\n")
    await stack.quiescent()


async def test_client_leaving_mid_stream_frees_its_slot_promptly(stack: EppStack) -> None:
    headers = {"x-sim-stream-chunks": "100", "x-sim-service-ms": "20000"}
    async with client() as http:
        r = await http.post(f"{stack.url}/v1/completions", data=_body(500), headers=headers)
        assert r.status == 200
        await r.content.readline()
        assert stack.leases() == 1
        r.close()  # the client is gone, 20 s before the stream would end
    await wait_for(lambda: stack.leases() == 0, timeout=2.0, what="lease freed at once")
    await stack.quiescent()


async def test_queued_client_that_leaves_leaves_nothing(stack: EppStack) -> None:
    headers = {"x-sim-stream-chunks": "100", "x-sim-service-ms": "20000"}
    # However the block ends: the holders' streams closed, then both sessions.
    async with client() as holders, client() as leaver, AsyncExitStack() as streams:
        for _ in stack.replicas:  # every slot taken by a long stream
            r = await holders.post(f"{stack.url}/v1/completions", data=_body(500), headers=headers)
            streams.callback(r.close)
            await r.content.readline()
        assert stack.leases() == len(stack.replicas)
        queued = asyncio.create_task(
            leaver.post(f"{stack.url}/v1/completions", data=_body(500), headers=headers)
        )
        await wait_for(lambda: stack.waiting() == 1, what="the fourth request queued")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        await leaver.close()
        await wait_for(lambda: stack.waiting() == 0, what="the waiter withdrawn")
        assert stack.leases() == len(stack.replicas)
    await stack.quiescent()
    assert sum(r.stats().received for r in stack.replicas) == len(stack.replicas)


async def test_get_without_body_and_bad_body(stack: EppStack) -> None:
    async with client() as http:
        async with http.get(f"{stack.url}/v1/models") as r:  # routed on headers alone
            assert r.status == 200
            assert r.headers["x-sim-replica"] in {s.address for s in stack.replicas}
        async with http.post(f"{stack.url}/v1/completions", data=b"{oops") as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_body"
        bad = json.dumps({"model": "nope"}).encode()
        async with http.post(f"{stack.url}/v1/completions", data=bad) as r:
            assert r.status == 404
    await stack.quiescent()
