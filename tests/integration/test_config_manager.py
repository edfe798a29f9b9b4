"""Every config change takes one path: reload, rollback after a NACK, and settle move every
component (registry, discovery, autoscaler, scraper) to the same version.

Real gRPC (a scripted ADS client NACKs like an Envoy would), the real Kubernetes client
against the test API server, a real file watcher.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.helpers import free_port, wait_for
from tests.integration.ads_client import SotwClient, sotw_names
from tests.kubeapi import KubeApiServer
from warmroute.config import Config
from warmroute.errors import ConfigError
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.state import Phase
from warmroute.state.ask import Ask
from warmroute.xds.resources import ROUTE_CONFIG_NAME, pool_cluster_name
from warmroute.xds.snapshot import CLUSTER, LISTENER, ROUTE

A, B = "127.0.0.1:1", "127.0.0.1:2"  # never contacted: probe off, no scrape


def _doc(
    *, replica: str = A, model: str = "m", scrape: float | None = 5.0, idle: float = 300.0
) -> dict[str, Any]:
    return {
        "control": {
            "start_fence": False,
            "grpc": f"127.0.0.1:{free_port()}",
            "admin": f"127.0.0.1:{free_port()}",
        },
        "xds": {"rollout": {"canary_share": 1.0, "soak_seconds": 3600}},
        "pools": [
            {
                "name": "p",
                "models": [model],
                "probe": None,
                "replicas": [replica],
                "metrics": None if scrape is None else {"interval_seconds": scrape},
            },
            {  # autoscaled from zero, with no demand: the autoscaler only holds its config
                "name": "s",
                "models": ["s"],
                "simulate": {"replicas": 0},
                "autoscale": {"min_replicas": 0, "max_replicas": 1, "idle_seconds": idle},
            },
        ],
    }


def _same_ports(doc: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    return doc | {"control": like["control"]}


def _running(plane: ControlPlane) -> dict[str, Any]:
    return plane.config.model_dump()


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    p = ControlPlane(Config.model_validate(_doc()))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _components(plane: ControlPlane) -> dict[str, object]:
    """What each component follows now, read from the component itself (private reads:
    the point is to see each component's own state, not what the manager believes)."""
    pool = plane.registry.pools.get("p")
    return {
        "registry models": sorted(m for p in plane.registry.pools.values() for m in p.spec.models),
        "registry replicas": sorted(pool.replicas) if pool else None,
        "probed": sorted(a for p, a in plane.discovery.prober.known() if p == "p"),
        "scraped": {n: i for n, (_, i) in plane.scraper._pools.items()},
        "autoscaled idle": {
            n: c.autoscale.idle_seconds for n, c in plane.autoscaler._pools.items() if c.autoscale
        },
    }


async def _subscribe(envoy: SotwClient) -> set[str]:
    """Listeners, routes and clusters, each ACKed, as an Envoy does; returns the clusters."""
    clusters: set[str] = set()
    for type_url, names in ((CLUSTER, []), (LISTENER, []), (ROUTE, [ROUTE_CONFIG_NAME])):
        await envoy.request(type_url, names)
        resp = await envoy.recv()
        if type_url == CLUSTER:
            clusters = sotw_names(resp)
        await envoy.ack(resp)
    return clusters


async def test_rollback_after_a_nack_moves_every_component_back(plane: ControlPlane) -> None:
    good = _components(plane)
    assert good == {
        "registry models": ["m", "s"],
        "registry replicas": [A],
        "probed": [A],
        "scraped": {"p": 5.0},
        "autoscaled idle": {"s": 300.0},
    }
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as channel:
        envoy = SotwClient(channel, "envoy-a")
        await _subscribe(envoy)
        await wait_for(lambda: plane.rollout.connected() == ["envoy-a"], what="node connected")

        bad = Config.model_validate(
            _same_ports(_doc(replica=B, model="m2", scrape=None, idle=600.0), _running(plane))
        )
        await plane.reload(bad)
        # While the canary has it, every component follows the candidate...
        assert _components(plane) == {
            "registry models": ["m2", "s"],
            "registry replicas": [B],
            "probed": [B],
            "scraped": {},
            "autoscaled idle": {"s": 600.0},
        }
        push = await envoy.recv()  # the new model is a new route
        assert push.type_url == ROUTE
        await envoy.nack(push, "route rejected")
        await wait_for(lambda: plane.rollout.status()["stage"] == "halted", what="halted")
        # ...and after the NACK, every one of them is back on the last good version.
        await wait_for(lambda: _components(plane) == good, what="every component rolled back")
        assert plane.config.pools[0].models == ["m"]
        await envoy.close()


async def test_endpoint_only_change_is_not_staged(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as channel:
        envoy = SotwClient(channel, "envoy-a")
        await envoy.request(CLUSTER, [])
        await envoy.ack(await envoy.recv())
        await wait_for(lambda: plane.rollout.connected() == ["envoy-a"], what="node connected")
        stable = plane.rollout.status()["stable"]

        moved = Config.model_validate(_same_ports(_doc(replica=B), _running(plane)))
        label = await plane.reload(moved)
        # Same listeners, routes and clusters: no canary, no soak; the move applies at once.
        assert label == stable
        assert plane.rollout.status()["stage"] == "stable"
        assert plane.rollout.status()["candidate"] is None
        assert sorted(plane.registry.pools["p"].replicas) == [B]
        assert plane.metrics.config_reloads.labels("applied")._value.get() == 1
        await envoy.close()


async def test_keys_only_a_restart_changes_are_refused_by_name(plane: ControlPlane) -> None:
    doc = _doc(model="m2")
    doc["control"] = plane.config.control.model_dump() | {"admin": f"127.0.0.1:{free_port()}"}
    with pytest.raises(ConfigError) as err:
        await plane.reload(Config.model_validate(doc))
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("control.admin: changed from")
    assert "restart" in err.value.problems[0]
    # Nothing changed: not even the parts that could have.
    assert plane.registry.pool_for_model("m") is not None
    assert plane.registry.pool_for_model("m2") is None


async def test_a_reload_adding_the_first_kubernetes_pool_builds_its_discovery() -> None:
    sim = SimReplica(1, 0.0, ServiceTime("fixed", 10), seed=0)
    port = await sim.start("127.0.0.1", 0)
    async with KubeApiServer(bookmark_interval=0.2) as kube:
        doc = _doc()
        doc["kubernetes"] = {"api_url": kube.url}
        plane = ControlPlane(Config.model_validate(doc))
        await plane.start()
        try:
            assert plane.kube_api is None  # nothing needed it yet
            labels = {"app": "llm"}
            kube.add_pod("ml", "llm-0", labels, "127.0.0.1", ready=True, container_port=port)
            doc["pools"].append(
                {
                    "name": "k",
                    "models": ["k"],
                    "kubernetes": {"namespace": "ml", "selector": labels, "port": port},
                    "probe": {"path": "/health", "interval_seconds": 0.05},
                }
            )
            await plane.reload(Config.model_validate(doc))
            assert plane.kube_api is not None
            pool = plane.registry.pools["k"]
            await wait_for(
                lambda: (
                    pool.replicas.get(sim.address) is not None
                    and pool.replicas[sim.address].phase is Phase.WARM
                ),
                what="the pod's replica warm in the new pool",
            )
        finally:
            await plane.stop()
            await sim.stop()


async def test_a_configmap_symlink_swap_is_noticed_and_a_touch_is_not(tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by swapping the ``..data`` symlink."""
    first = _doc()
    second = _same_ports(_doc(model="m2"), first)

    def version(name: str, doc: dict[str, Any]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(doc))
        os.symlink(name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # atomic, as the kubelet

    version("..2026_12_02_a", first)
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    path = tmp_path / "config.yaml"
    plane = ControlPlane(Config.model_validate(first), config_path=path)
    await plane.start()
    try:
        applied = plane.metrics.config_reloads.labels("applied")
        # A touch (same bytes) and a rewrite with the same content are no change.
        os.utime(tmp_path / "..2026_12_02_a" / "config.yaml")
        version("..2026_12_02_b", first)
        version("..2026_12_02_c", second)
        await wait_for(lambda: plane.registry.pool_for_model("m2") is not None, what="swap seen")
        assert applied._value.get() == 1
    finally:
        await plane.stop()


async def test_a_removed_pools_cluster_stays_until_its_last_request_ends() -> None:
    """Envoy fixes a request's route (and so its cluster) when the request starts: a pool
    removed while a request waits or runs keeps its cluster, without a route, until that
    request ends; then a new version drops the cluster."""
    doc = _doc()
    doc["xds"]["rollout"]["soak_seconds"] = 0
    doc["control"]["expire_interval_seconds"] = 0.05
    doc["pools"] = [
        {"name": "p", "models": ["m"], "probe": None, "replicas": [A]},
        {"name": "gone", "models": ["g"], "probe": None, "replicas": [B]},
    ]
    plane = ControlPlane(Config.model_validate(doc))
    await plane.start()
    clusters: list[set[str]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.grpc_port}") as channel:
            envoy = SotwClient(channel, "envoy-a")
            clusters.append(await _subscribe(envoy))
            await wait_for(lambda: plane.rollout.connected() == ["envoy-a"], what="connected")

            async def follow() -> None:  # ACK every push, as Envoy does
                while True:
                    resp = await envoy.recv(timeout=60)
                    if resp.type_url == CLUSTER:
                        clusters.append(sotw_names(resp))
                    await envoy.ack(resp)

            follower = asyncio.create_task(follow())
            gone = plane.registry.pools["gone"]
            await wait_for(lambda: gone.try_acquire(Ask("req-1")) is not None, what="warm")
            (lease,) = gone.active_leases()

            doc["pools"] = doc["pools"][:1]
            label = await plane.reload(Config.model_validate(doc))
            await wait_for(lambda: plane.rollout.status()["stable"] == label, what="promoted")
            await wait_for(lambda: plane.registry.pool_for_model("g") is None, what="settled")
            # Every node is on the new version, the request still runs: its cluster stays,
            # its pool is found by name (Envoy's route) but no longer by model.
            assert pool_cluster_name("gone") in clusters[-1]
            assert plane.registry.pools["gone"] is gone
            assert plane.registry.pool_for_model("g") is None
            assert plane.kept_pool_names() == ["gone"]

            gone.release(lease)
            await wait_for(
                lambda: bool(clusters) and pool_cluster_name("gone") not in clusters[-1],
                what="the drained pool's cluster removed",
            )
            await wait_for(lambda: "gone" not in plane.registry.pools, what="pool dropped")
            assert plane.kept_pool_names() == []
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    finally:
        await plane.stop()
