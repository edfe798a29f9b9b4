"""The config plane with real Envoys over ADS (state-of-the-world and delta)."""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from tests.e2e import envoy_admin
from tests.e2e.stack import MODEL, StackFactory, background, client
from tests.helpers import wait_for
from warmroute.config import Config
from warmroute.server import ControlPlane
from warmroute.state import Phase, ReplicaRemoved, ReplicaUpsert

VARIANTS = ["sotw", "delta"]
CLUSTER = "warmroute_pool_main"


@pytest.mark.parametrize("variant", VARIANTS)
async def test_endpoints_follow_the_registry(stack_factory: StackFactory, variant: str) -> None:
    stack = await stack_factory(replicas=2, variant=variant)
    await stack.wait_warm()
    a, b = (r.address for r in stack.replicas)
    admin = stack.config.envoy.admin

    async def envoy_hosts() -> dict[str, str]:
        return await envoy_admin.hosts(admin, CLUSTER)

    await wait_for(lambda: _eq(envoy_hosts(), {a: "HEALTHY", b: "HEALTHY"}), what="2 hosts")

    # A replica turning warm while Envoy is connected becomes leasable only once
    # Envoy has ACKed an EDS version with it.
    c = await _extra_replica(stack)
    pool = stack.plane.registry.pools["main"]
    started = time.perf_counter()
    stack.plane.publisher.emit(ReplicaUpsert("main", c, 1, Phase.WARM))
    assert pool.replicas[c].phase is Phase.LOADING  # not before Envoy has it
    await wait_for(lambda: pool.replicas[c].phase is Phase.WARM, what="c routable")
    routable_after = time.perf_counter() - started
    assert (await envoy_hosts())[c] == "HEALTHY"
    print(f"\n[{variant}] warm -> EDS acked by Envoy -> leasable: {routable_after * 1e3:.1f} ms")
    stack.plane.publisher.emit(ReplicaRemoved("main", c))
    await wait_for(lambda: _eq(envoy_hosts(), {a: "HEALTHY", b: "HEALTHY"}), what="c gone")

    stack.plane.publisher.emit(ReplicaUpsert("main", b, 1, Phase.DRAINING))
    await wait_for(lambda: _eq(envoy_hosts(), {a: "HEALTHY", b: "DRAINING"}), what="b draining")
    stack.plane.publisher.emit(ReplicaRemoved("main", b))
    await wait_for(lambda: _eq(envoy_hosts(), {a: "HEALTHY"}), what="b removed")
    # A draining replica takes no new request; traffic all goes to a.
    async with client() as http:
        for _ in range(4):
            async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL}) as r:
                assert r.status == 200
    assert stack.replicas[1].stats().received == 0
    assert stack.replicas[0].stats().received == 4


async def _eq(got: Any, want: dict[str, str]) -> bool:
    return bool(await got == want)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_config_change_rolls_out_with_no_failed_request(
    stack_factory: StackFactory, variant: str
) -> None:
    stack = await stack_factory(replicas=2, service_ms=20, variant=variant)
    await stack.wait_warm()
    second = await stack.add_envoy("envoy-1", variant)
    await wait_for(lambda: len(stack.plane.rollout.connected()) == 2, what="two Envoys")
    admin = stack.config.envoy.admin
    statuses: list[int] = []

    new_sim = await _extra_replica(stack)
    doc = stack.config.model_dump()
    doc["xds"]["rollout"]["soak_seconds"] = 0.2
    doc["pools"][0]["max_request_seconds"] = 120
    doc["pools"].append(
        {"name": "second", "models": ["other-model"], "probe": None, "replicas": [new_sim]}
    )
    async with client() as http:

        async def load(stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL}) as r:
                    statuses.append(r.status)

        async with background(load, 4, swallow=True):
            await _change_config_under_load(stack, doc, statuses, http, second.admin)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    dump = await envoy_admin.get_json(admin, "/config_dump?resource=dynamic_route_configs")
    assert '"120s"' in str(dump).replace("'", '"')
    assert stack.metric("warmroute_xds_nacks_total") == 0


async def _change_config_under_load(
    stack: Any,
    doc: dict[str, Any],
    statuses: list[int],
    http: aiohttp.ClientSession,
    second_admin: str,
) -> None:
    """Reload a config with a new pool and a changed timeout while traffic flows."""
    admin = stack.config.envoy.admin
    new_sim = doc["pools"][1]["replicas"][0]
    await wait_for(lambda: len(statuses) >= 20, what="traffic flowing")
    label = await stack.plane.reload(Config.model_validate(doc))
    await wait_for(lambda: stack.plane.rollout.status()["stable"] == label, what="rollout promoted")

    async def has_model() -> bool:
        for a in (admin, second_admin):
            if "other-model" not in await envoy_admin.route_models(a):
                return False
        return True

    await wait_for(has_model, what="new route in every Envoy")
    await wait_for(lambda: _routable(stack, "second"), what="new pool's replica routable")
    async with http.post(stack.url + "/v1/x", headers={"x-model": "other-model"}) as r:
        assert r.status == 200
        assert (await r.json())["replica"] == new_sim
    count = len(statuses)
    await wait_for(lambda: len(statuses) >= count + 20, what="traffic after the change")


def _routable(stack: Any, pool: str) -> bool:
    p = stack.plane.registry.pools.get(pool)
    return p is not None and any(r.phase is Phase.WARM for r in p.replicas.values())


async def _extra_replica(stack: Any) -> str:
    from warmroute.sim.replica import SimReplica
    from warmroute.sim.service_time import ServiceTime

    sim = SimReplica(1, 0.0, ServiceTime("fixed", 10.0), seed=99, model="other-model")
    port = await sim.start("127.0.0.1", 0)
    stack.extra.append(sim)
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("variant", VARIANTS)
async def test_nacked_config_halts_at_the_canary_and_keeps_the_last_good(
    stack_factory: StackFactory, cleanup: AsyncExitStack, variant: str
) -> None:
    stack = await stack_factory(replicas=1, service_ms=10, variant=variant, node_id="envoy-0")
    await stack.wait_warm()
    # A second Envoy of the fleet, sharing the listener port (SO_REUSEPORT).
    second = await stack.add_envoy("envoy-1", variant)
    second_admin = second.admin
    plane = stack.plane
    await wait_for(lambda: len(plane.rollout.connected()) == 2, what="two Envoys connected")
    good = plane.rollout.status()["stable"]

    # A config Envoy must reject: the listener moves to a port something else holds.
    blocker = socket.socket()
    cleanup.callback(blocker.close)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    doc = stack.config.model_dump()
    doc["envoy"]["listen"] = f"127.0.0.1:{blocker.getsockname()[1]}"
    doc["xds"]["rollout"] = {"canary_nodes": ["envoy-0"], "soak_seconds": 60}
    await plane.reload(Config.model_validate(doc))

    await wait_for(lambda: plane.rollout.status()["stage"] == "halted", what="halted")
    status = plane.rollout.status()
    assert status["stable"] == good
    assert status["nodes"]["envoy-0"]["last_nack"], status
    assert status["nodes"]["envoy-1"]["last_nack"] == ""  # never got the bad version
    assert status["nodes"]["envoy-1"]["config"] == good
    assert stack.metric("warmroute_xds_nacks_total") >= 1
    assert stack.metric("warmroute_xds_node_last_nack_info", node="envoy-0") == 1
    assert stack.metric("warmroute_xds_node_config_info", node="envoy-1", acked=good) == 1
    # Both Envoys still serve on the last good listener.
    async with client() as http:
        for _ in range(4):
            async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL}) as r:
                assert r.status == 200
    names = await envoy_admin.dynamic_names(second_admin)
    assert names["listeners"] == ["warmroute_ingress"]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_envoy_keeps_config_and_resyncs_after_control_plane_restart(
    stack_factory: StackFactory, variant: str
) -> None:
    stack = await stack_factory(replicas=1, service_ms=10, variant=variant)
    await stack.wait_warm()
    admin = stack.config.envoy.admin
    await stack.plane.stop()
    # Envoy keeps the last config it had while warmroute is away.
    names = await envoy_admin.dynamic_names(admin)
    assert CLUSTER in names["clusters"] and names["listeners"] == ["warmroute_ingress"]
    stack.plane = ControlPlane(stack.config)
    await stack.plane.start()
    await wait_for(
        lambda: stack.plane.rollout.connected() == ["envoy-0"], timeout=20,
        what="Envoy reconnected to the new control plane",
    )  # fmt: skip
    await stack.wait_warm()
    async with client() as http:

        async def served() -> bool:
            async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL}) as r:
                return r.status == 200

        await wait_for(served, timeout=10, what="requests served again")
    await stack.wait_idle()
