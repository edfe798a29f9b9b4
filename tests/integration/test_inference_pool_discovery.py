"""Discovery from an ``InferencePool``: the real ``kubernetes`` client against the test API
server, events into a real registry (and, last, a whole control plane with probed
simulated replicas). Every wait is a condition with a deadline."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s

from tests.helpers import free_port, wait_for
from tests.kubeapi import KubeApiServer, api_client
from tests.kubeapi.resources import INFERENCE_POOLS
from warmroute.config import Config
from warmroute.discovery.inference_pool import FAIL_OPEN_WARNING, InferencePoolDiscovery
from warmroute.k8s.rbac import EPP_REQUIRED
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.state import Phase, Registry

NS = "models"
LLAMA = {"app": "llama"}
W, L, D = Phase.WARM, Phase.LOADING, Phase.DRAINING


def pool_config(**extra: Any) -> dict[str, Any]:
    return {
        "name": "main",
        "models": ["llama"],
        "slots": 2,
        "probe": None,  # Ready is warm: these pod IPs serve nothing
        "inference_pool": {"namespace": NS, "name": "llama"},
        **extra,
    }


@dataclass
class Rig:
    kube: KubeApiServer
    registry: Registry
    discovery: InferencePoolDiscovery

    def replicas(self) -> dict[str, Phase]:
        pool = self.registry.pools["main"]
        return {a: r.phase for a, r in pool.replicas.items()}

    async def expect(self, wanted: dict[str, Phase], what: str) -> None:
        await wait_for(lambda: self.replicas() == wanted, what=f"{what}: {wanted}")

    def ports(self, ports: list[int]) -> None:
        self.kube.update_inference_pool(
            NS, "llama", lambda o: o["spec"].update(targetPorts=[{"number": n} for n in ports])
        )

    def selector(self, labels: dict[str, str]) -> None:
        self.kube.update_inference_pool(
            NS, "llama", lambda o: o["spec"].update(selector={"matchLabels": labels})
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with KubeApiServer(bookmark_interval=0.2) as kube:
        cfg = Config.model_validate({"pools": [pool_config()]})
        registry = Registry()
        registry.configure(cfg.specs())
        api = api_client(kube.port)
        discovery = InferencePoolDiscovery(api, registry.apply)
        await discovery.update(cfg)
        try:
            yield Rig(kube, registry, discovery)
        finally:
            await discovery.close()
            api.close()


async def test_follows_the_inference_pool_through_its_life(rig: Rig) -> None:
    kube = rig.kube
    kube.add_pod(NS, "a", LLAMA, "10.0.0.1", ready=True)
    kube.add_pod(NS, "b", LLAMA, "10.0.0.2", ready=False)
    kube.add_pod(NS, "c", {"app": "llama-v2"}, "10.0.0.3", ready=True)
    kube.add_pod("elsewhere", "z", LLAMA, "10.0.9.9", ready=True)  # another namespace
    await wait_for(lambda: kube.list_count("inferencepools") == 1, what="pool listed")
    assert rig.replicas() == {}  # no InferencePool yet: no replicas, no pod watch
    assert kube.list_count("pods") == 0
    assert rig.discovery.status()["main"]["present"] is False

    kube.add_inference_pool(NS, "llama", LLAMA, [8000])
    await rig.expect({"10.0.0.1:8000": W, "10.0.0.2:8000": L}, "created")
    assert all(r.slots == 2 for r in rig.registry.pools["main"].replicas.values())
    kube.set_pod_ready(NS, "b", True)
    kube.set_pod_ready(NS, "a", False)
    await rig.expect({"10.0.0.1:8000": L, "10.0.0.2:8000": W}, "readiness follows the pods")
    kube.set_pod_ready(NS, "a", True)

    rig.ports([8000, 8001])  # two ports per pod: two endpoints each
    await rig.expect(
        {"10.0.0.1:8000": W, "10.0.0.1:8001": W, "10.0.0.2:8000": W, "10.0.0.2:8001": W},
        "second target port",
    )
    assert rig.discovery.addresses("main")["a"] == {"10.0.0.1:8000", "10.0.0.1:8001"}
    rig.ports([8001])
    await rig.expect({"10.0.0.1:8001": W, "10.0.0.2:8001": W}, "first port dropped")
    assert kube.list_count("pods") == 1  # ports alone never re-watch pods

    kube.delete_pod(NS, "b")  # graceful: draining, then gone
    await rig.expect({"10.0.0.1:8001": W, "10.0.0.2:8001": D}, "deleting pod drains")
    kube.finalize_pod_deletion(NS, "b")
    await rig.expect({"10.0.0.1:8001": W}, "deleted pod gone")

    rig.selector({"app": "llama-v2"})  # new selector: pods watched again
    await rig.expect({"10.0.0.3:8001": W}, "selector changed")
    assert kube.list_count("pods") == 2
    await wait_for(lambda: kube.active_watches("pods") == 1, what="one pod watch")
    kube.add_pod(NS, "d", LLAMA, "10.0.0.4", ready=True)  # the old selector: ignored
    kube.add_pod(NS, "e", {"app": "llama-v2"}, "10.0.0.5", ready=True)
    await rig.expect({"10.0.0.3:8001": W, "10.0.0.5:8001": W}, "new selector's pods")

    kube.delete_inference_pool(NS, "llama")
    await rig.expect({}, "InferencePool deleted: its replicas go")
    await wait_for(lambda: kube.active_watches("pods") == 0, what="pod watch stopped")
    status = rig.discovery.status()["main"]
    assert status["present"] is False and status["failure_mode"] is None

    kube.add_inference_pool(NS, "llama", LLAMA, [9000], failure_mode="FailOpen")
    await rig.expect({"10.0.0.1:9000": W, "10.0.0.4:9000": W}, "created again")
    status = rig.discovery.status()["main"]
    assert status == {
        "namespace": NS,
        "name": "llama",
        "present": True,
        "error": None,
        "selector": LLAMA,
        "target_ports": [9000],
        "app_protocol": "http",
        "failure_mode": "FailOpen",
        "endpoint_picker": {"kind": "Service", "name": "warmroute-epp", "port": 9002},
        "watch": {"connected": True, "pods_connected": True, "errors": 0},
    }
    # Every call falls within deploy/epp's RBAC (only list + watch: no get, no write).
    groups = {"pods": "", "inferencepools": "inference.networking.k8s.io"}
    for resource, verb in kube.requests:
        assert verb in EPP_REQUIRED[(groups[resource], resource)], (resource, verb)


async def test_pod_ip_change_and_finished_pods(rig: Rig) -> None:
    kube = rig.kube
    kube.add_inference_pool(NS, "llama", LLAMA, [8000, 8001])
    kube.add_pod(NS, "a", LLAMA, None, ready=False, phase="Pending")  # no IP yet
    kube.add_pod(NS, "b", LLAMA, "10.0.0.2", ready=True)
    await rig.expect({"10.0.0.2:8000": W, "10.0.0.2:8001": W}, "a pod without IP is none")
    kube.update_pod(NS, "a", lambda p: p["status"].update(phase="Running"))
    kube.set_pod_ip(NS, "a", "10.0.0.1")
    kube.set_pod_ready(NS, "a", True)
    await rig.expect(
        {"10.0.0.1:8000": W, "10.0.0.1:8001": W, "10.0.0.2:8000": W, "10.0.0.2:8001": W},
        "IP assigned",
    )
    kube.set_pod_ip(NS, "a", "10.0.0.7")
    kube.set_pod_phase(NS, "b", "Succeeded")
    await rig.expect(
        {"10.0.0.7:8000": W, "10.0.0.7:8001": W}, "IP change replaces; finished pod goes"
    )


async def test_410_relists_and_changes_in_the_gap_are_not_lost(rig: Rig) -> None:
    kube = rig.kube
    kube.add_inference_pool(NS, "llama", LLAMA, [8000])
    kube.add_pod(NS, "a", LLAMA, "10.0.0.1", ready=True)
    kube.add_pod(NS, "b", LLAMA, "10.0.0.2", ready=True)
    await rig.expect({"10.0.0.1:8000": W, "10.0.0.2:8000": W}, "start")

    async def gap(change: Callable[[], None]) -> None:
        """Watches down (re-watches fail), ``change``, history compacted, watches back."""
        kube.fail_for(60, 503, verb="watch")
        kube.close_watches()
        await wait_for(lambda: kube.active_watches() == 0, what="watches closed")
        change()
        kube.compact()
        kube.clear_faults()

    lists = kube.list_count("inferencepools"), kube.list_count("pods")

    def first_gap() -> None:
        rig.ports([8000, 8001])
        kube.delete_pod(NS, "b", grace_seconds=0)
        kube.finalize_pod_deletion(NS, "b")
        kube.add_pod(NS, "c", LLAMA, "10.0.0.3", ready=True)

    await gap(first_gap)
    await rig.expect(
        {"10.0.0.1:8000": W, "10.0.0.1:8001": W, "10.0.0.3:8000": W, "10.0.0.3:8001": W},
        "relisted after 410",
    )
    assert kube.list_count("inferencepools") == lists[0] + 1
    assert kube.list_count("pods") == lists[1] + 1

    await gap(lambda: kube.delete_inference_pool(NS, "llama"))
    await rig.expect({}, "pool deleted while the watch was down")
    assert kube.list_count("inferencepools") == lists[0] + 2
    assert rig.discovery.stats()["main"].errors >= 1  # the refused re-watches were counted


async def test_config_reload_switches_pools_and_an_unusable_pool_has_no_replicas(
    rig: Rig,
) -> None:
    kube = rig.kube
    kube.add_inference_pool(NS, "llama", LLAMA, [8000])
    kube.add_inference_pool(NS, "other", {"app": "other"}, [7000])
    kube.add_pod(NS, "a", LLAMA, "10.0.0.1", ready=True)
    kube.add_pod(NS, "o", {"app": "other"}, "10.0.0.9", ready=True)
    await rig.expect({"10.0.0.1:8000": W}, "start")
    cfg = Config.model_validate(
        {"pools": [pool_config(inference_pool={"namespace": NS, "name": "other"})]}
    )
    await rig.discovery.update(cfg)
    await rig.expect({"10.0.0.9:7000": W}, "reload points the pool at another InferencePool")
    # A pool the CRD would reject (written around validation): logged, no replicas.
    bad = kube.inference_pool(NS, "other")
    assert bad is not None
    bad["spec"]["targetPorts"] = []
    kube.store.update(INFERENCE_POOLS, bad)
    await rig.expect({}, "unusable InferencePool")
    assert "spec.targetPorts" in rig.discovery.status()["main"]["error"]


@pytest.mark.parametrize("epp", [False, True], ids=["own-envoy", "epp"])
async def test_control_plane_probes_each_port_and_shows_the_failure_mode(
    caplog: pytest.LogCaptureFixture, epp: bool
) -> None:
    kube = KubeApiServer(bookmark_interval=0.2)
    await kube.start()
    sims = [SimReplica(1, 0.0, ServiceTime("fixed", 10), seed=0) for _ in range(2)]
    ports = [await s.start("127.0.0.1", 0) for s in sims]
    cfg = Config.model_validate(
        {
            "control": {
                "start_fence": False,
                "grpc": f"127.0.0.1:{free_port()}",
                "admin": f"127.0.0.1:{free_port()}",
            },
            "kubernetes": {"api_url": kube.url},
            "pools": [pool_config(probe={"path": "/health", "interval_seconds": 0.05})],
            "epp": {"enabled": epp, "tls": False},  # the picker mode uses the same discovery
        }
    )
    kube.add_inference_pool(NS, "llama", LLAMA, ports, failure_mode="FailOpen")
    kube.add_pod(NS, "a", LLAMA, "127.0.0.1", ready=True)
    plane = ControlPlane(cfg)
    caplog.set_level(logging.WARNING, logger="warmroute.discovery.inference_pool")
    await plane.start()
    try:
        pool = plane.registry.pools["main"]
        wanted = {s.address for s in sims}
        await wait_for(
            lambda: {a for a, r in pool.replicas.items() if r.phase is W} == wanted,
            what="both ports of the pod warm (probed)",
        )
        await sims[1].stop()  # one port stops answering its warm probe
        await wait_for(lambda: pool.replicas[sims[1].address].phase is L, what="unwarm")
        url = f"http://{cfg.control.admin}/state"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            state = await resp.json()
        assert state["inference_pools"]["main"]["failure_mode"] == "FailOpen"
        assert state["inference_pools"]["main"]["target_ports"] == ports
        assert [m for m in caplog.messages if FAIL_OPEN_WARNING in m] == [
            f"pool main: InferencePool {NS}/llama has failureMode FailOpen: {FAIL_OPEN_WARNING}"
        ]
        assert isinstance(plane.kube_api, k8s.ApiClient)
    finally:
        await plane.stop()
        for s in sims:
            await s.stop()
        await kube.stop()
