"""Per-node Envoy settings (``envoy.nodes``): two real Envoys on one host, each with its own
listener (over LDS) and admin address (in its bootstrap), chosen by node id or by node
cluster; a staged rollout that changes one node's listener moves only that node.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e import envoy_admin
from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.xds.bootstrap import ads_bootstrap, to_json

MODEL = "m"


def _addr() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
async def parts() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def _listening_ports(admin: str) -> set[int]:
    data = await envoy_admin.get_json(admin, "/listeners?format=json")
    return {s["local_address"]["socket_address"]["port_value"] for s in data["listener_statuses"]}


async def _ask(url: str) -> int:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url + "/v1/completions", headers={"x-model": MODEL}, json={}) as resp,
    ):
        await resp.read()
        return resp.status


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("variant", ["delta", "sotw"])
async def test_each_envoy_gets_its_own_listener_and_admin(
    parts: contextlib.AsyncExitStack, variant: str
) -> None:
    sim = SimReplica(4, 0.0, ServiceTime("fixed", 5), seed=0, model="any")
    parts.push_async_callback(sim.stop)
    await sim.start("127.0.0.1", 0)
    listen_a, admin_a, listen_b, admin_b = _addr(), _addr(), _addr(), _addr()
    doc: dict[str, Any] = {
        "envoy": {
            "listen": _addr(),  # nobody's: both nodes have their own
            "nodes": [
                {"id": "envoy-a", "listen": listen_a, "admin": admin_a},
                {"cluster": "zone-b", "listen": listen_b, "admin": admin_b},
            ],
        },
        "control": {"grpc": _addr(), "admin": _addr()},
        "xds": {"variant": variant, "rollout": {"canary_nodes": ["envoy-a"], "soak_seconds": 0.2}},
        "pools": [
            {
                "name": "p",
                "models": [MODEL],
                "slots": 4,
                "probe": {"path": "/health", "interval_seconds": 0.05},
                "replicas": [sim.address],
            }
        ],
    }
    cfg = Config.model_validate(doc)
    plane = ControlPlane(cfg)
    parts.push_async_callback(plane.stop)
    await plane.start()
    for node, cluster, admin in (("envoy-a", "warmroute", admin_a), ("envoy-b", "zone-b", admin_b)):
        boot = ads_bootstrap(cfg, node_id=node, variant=variant, cluster=cluster)
        # The bootstrap carries the node's own admin address (envoy.nodes).
        assert boot.admin.address.socket_address.port_value == _port(admin)
        envoy = EnvoyProcess(to_json(boot), admin, log_level="warning")
        parts.push_async_callback(envoy.stop)
        await envoy.start()

    async def serving(admin: str, listen: str) -> bool:
        return await _listening_ports(admin) == {_port(listen)}

    await wait_for(lambda: serving(admin_a, listen_a), what="envoy-a on its own port")
    await wait_for(lambda: serving(admin_b, listen_b), what="envoy-b on its zone's port")
    await wait_for(
        lambda: any(r.phase == "warm" for r in plane.registry.view().pools[0].replicas),
        what="replica warm",
    )
    assert await _ask(f"http://{listen_a}") == 200
    assert await _ask(f"http://{listen_b}") == 200

    # A staged change of zone-b's port: the canary (envoy-a, whose listener is unchanged)
    # ACKs it, it is promoted, and only envoy-b moves.
    moved = _addr()
    doc["envoy"]["nodes"][1]["listen"] = moved
    before = plane.rollout.status()["stable"]
    label = await plane.reload(Config.model_validate(doc))
    assert label != before  # a node's listener is config: a new version, staged
    await wait_for(lambda: plane.rollout.status()["stable"] == label, what="promoted")
    await wait_for(lambda: serving(admin_b, moved), what="envoy-b moved")
    assert await _listening_ports(admin_a) == {_port(listen_a)}
    assert await _ask(f"http://{moved}") == 200
    assert await _ask(f"http://{listen_a}") == 200
    nodes = plane.rollout.status()["nodes"]
    assert nodes["envoy-a"]["config"] == nodes["envoy-b"]["config"] == label
    assert nodes["envoy-b"]["cluster"] == "zone-b"
