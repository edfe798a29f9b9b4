"""Kubernetes discovery, autoscaling and draining with the real `kubernetes` client (against
the test API server) and a real Envoy carrying the traffic."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.e2e import envoy_admin
from tests.e2e.kube_stack import NS, KubeStack, pool_config, start_kube_stack
from tests.e2e.stack import MODEL, client
from tests.helpers import wait_for
from tests.kubeapi.server import KubeApiServer
from warmroute.k8s.rbac import REQUIRED
from warmroute.k8s.scale import DELETION_COST
from warmroute.state import Phase

CLUSTER = "warmroute_pool_main"
GROUPS = {"pods": "", "deployments/scale": "apps", "statefulsets/scale": "apps"}


async def _post(http: aiohttp.ClientSession, stack: KubeStack, **headers: str) -> int:
    async with http.post(stack.url + "/v1/x", headers={"x-model": MODEL, **headers}) as r:
        await r.read()
        return r.status


def _assert_within_rbac(api: KubeApiServer) -> None:
    for (resource, verb), n in api.requests.items():
        group = "coordination.k8s.io" if resource == "leases" else GROUPS.get(resource, "?")
        allowed = REQUIRED.get((group, resource), frozenset())
        assert verb in allowed, f"warmroute sent {n} {verb} {resource}: not in deploy RBAC"


async def test_pod_goes_ready_then_warm_then_routable_and_drains_when_deleted() -> None:
    stack = await start_kube_stack()
    try:
        admin = stack.config.envoy.admin
        a = await stack.add_pod("pod-a", ready=False, load_seconds=0.3)
        await stack.wait_phase("pod-a", Phase.LOADING)  # Running, not Ready
        assert await envoy_admin.hosts(admin, CLUSTER) == {}
        stack.api.set_pod_ready(NS, "pod-a", True)  # Ready, but the model may still load
        await stack.wait_phase("pod-a", Phase.WARM)
        assert (await envoy_admin.hosts(admin, CLUSTER)) == {a.address: "HEALTHY"}
        b = await stack.add_pod("pod-b")
        await stack.wait_phase("pod-b", Phase.WARM)

        async with client() as http:
            # A long request on a, then a is deleted: it drains.
            long = asyncio.create_task(_post(http, stack, **{"x-sim-service-ms": "1500"}))
            await wait_for(lambda: a.stats().in_flight + b.stats().in_flight == 1, what="busy")
            busy, other = ("pod-a", "pod-b") if a.stats().in_flight else ("pod-b", "pod-a")
            stack.api.delete_pod(NS, busy)
            await stack.wait_phase(busy, Phase.DRAINING)

            async def draining_in_envoy() -> bool:
                hosts = await envoy_admin.hosts(admin, CLUSTER)
                return hosts.get(stack.sims[busy].address) == "DRAINING"

            await wait_for(draining_in_envoy, what="deleted pod DRAINING in Envoy")
            for _ in range(3):  # new requests all go to the other pod
                assert await _post(http, stack) == 200
            assert stack.sims[busy].stats().received == 1
            assert stack.sims[other].stats().received == 3
            assert await long == 200  # the in-flight request finished on the draining pod
        stack.api.finalize_pod_deletion(NS, busy)
        await stack.wait_phase(busy, None)

        async def gone_from_envoy() -> bool:
            return stack.sims[busy].address not in await envoy_admin.hosts(admin, CLUSTER)

        await wait_for(gone_from_envoy, what="deleted pod removed from Envoy")
        _assert_within_rbac(stack.api)
    finally:
        await stack.stop()


async def test_burst_at_zero_scales_up_within_a_second_and_every_request_is_served() -> None:
    stack_ref: list[KubeStack] = []
    created: list[asyncio.Task[object]] = []

    def controller(kind: str, ns: str, name: str, replicas: int) -> None:
        # The test's ReplicaSet controller: create pods up to `replicas`.
        stack = stack_ref[0]
        have = len(stack.sims)
        for i in range(have, replicas):
            created.append(
                asyncio.get_running_loop().create_task(stack.add_pod(f"sim-{i}", load_seconds=0.5))
            )

    api = KubeApiServer(bookmark_interval=0.2, on_scale=controller)
    await api.start()
    api.add_deployment(NS, "sim", 0)
    pool = pool_config(
        autoscale={"min_replicas": 0, "max_replicas": 3, "idle_seconds": 600},
        queue={"timeout_seconds": 30, "max_waiting": 100},
    )
    stack = await start_kube_stack(api, pool=pool)
    stack_ref.append(stack)
    try:
        async with client() as http:
            burst_at = time.monotonic()
            statuses = asyncio.gather(*(_post(http, stack) for _ in range(6)))
            await wait_for(lambda: bool(api.scale_history), what="a scale patch")
            first = api.scale_history[0]
            print(f"\nburst at zero -> scale patch to {first.replicas} after "
                  f"{(first.at - burst_at) * 1e3:.0f} ms")  # fmt: skip
            assert first.at - burst_at < 1.0
            assert first.replicas >= 1
            assert await statuses == [200] * 6
        await asyncio.gather(*created)
        assert sum(s.stats().received_while_full for s in stack.sims.values()) == 0
        assert max(api.replicas("Deployment", NS, "sim"), 0) <= 3
        _assert_within_rbac(api)
    finally:
        await stack.stop()


async def test_idle_pool_scales_down_after_marking_idle_pods() -> None:
    api = KubeApiServer(bookmark_interval=0.2)
    await api.start()
    api.add_deployment(NS, "sim", 2)
    pool = pool_config(autoscale={"min_replicas": 0, "max_replicas": 2, "idle_seconds": 1.0})
    stack = await start_kube_stack(api, pool=pool)
    try:
        await stack.add_pod("sim-0")
        await stack.add_pod("sim-1")
        await stack.wait_phase("sim-0", Phase.WARM)
        await stack.wait_phase("sim-1", Phase.WARM)
        async with client() as http:
            assert await _post(http, stack) == 200
        await wait_for(lambda: api.replicas("Deployment", NS, "sim") == 0, timeout=10,
                       what="scaled to zero after idling")  # fmt: skip
        down = api.scale_history[-1]
        for name in ("sim-0", "sim-1"):
            pod = api.pod(NS, name)
            assert pod is not None
            assert pod["metadata"]["annotations"][DELETION_COST] == "-100"
            # The idle mark was written before the scale-down.
            assert int(pod["metadata"]["resourceVersion"]) < int(down.resource_version)
        _assert_within_rbac(api)
    finally:
        await stack.stop()


async def test_watch_closed_or_expired_loses_no_event_and_makes_no_duplicate() -> None:
    stack = await start_kube_stack()
    api = stack.api
    try:
        await stack.add_pod("pod-a")
        await stack.add_pod("pod-b")
        await stack.wait_phase("pod-a", Phase.WARM)
        await stack.wait_phase("pod-b", Phase.WARM)
        assert api.list_count() == 1

        # The API server drops the watch: warmroute re-watches from its last version.
        api.close_watches()
        await stack.add_pod("pod-c")
        await stack.wait_phase("pod-c", Phase.WARM)
        await wait_for(lambda: api.watch_count() >= 2, what="re-watch")
        assert api.list_count() == 1  # resumed, no relist

        # History compacted while disconnected: the re-watch gets 410 Gone and relists;
        # pod-b was deleted in the gap and pod-d added.
        api.compact()
        api.close_watches()
        api.delete_pod(NS, "pod-b")
        api.finalize_pod_deletion(NS, "pod-b")
        await stack.add_pod("pod-d")
        await wait_for(lambda: api.list_count() == 2, what="relist after 410")
        await stack.wait_phase("pod-d", Phase.WARM)
        await stack.wait_phase("pod-b", None)
        assert stack.replica_count() == 3  # a, c, d: nothing lost, nothing twice
        hosts = await envoy_admin.hosts(stack.config.envoy.admin, CLUSTER)
        assert sorted(hosts) == sorted(stack.sims[n].address for n in ("pod-a", "pod-c", "pod-d"))
        _assert_within_rbac(api)
    finally:
        await stack.stop()


async def test_api_errors_keep_the_last_known_state() -> None:
    stack = await start_kube_stack()
    api = stack.api
    try:
        await stack.add_pod("pod-a")
        await stack.wait_phase("pod-a", Phase.WARM)
        api.fail_for(1.0, 503)
        api.close_watches()
        await wait_for(
            lambda: any(s.errors for s in stack.plane.kube_discovery.stats().values()),
            what="watch errors reported",
        )  # fmt: skip
        assert stack.phase("pod-a") is Phase.WARM  # unreachable API removes nothing
        async with client() as http:
            assert await _post(http, stack) == 200
        # Unreachable altogether (connections refused) for a while: same.
        await api.set_unreachable()
        api.close_watches()
        errors = sum(s.errors for s in stack.plane.kube_discovery.stats().values())
        await wait_for(
            lambda: sum(s.errors for s in stack.plane.kube_discovery.stats().values()) > errors,
            what="unreachable API reported",
        )  # fmt: skip
        assert stack.phase("pod-a") is Phase.WARM
        await api.set_reachable()
        await stack.add_pod("pod-b")  # after the outage, events flow again
        await stack.wait_phase("pod-b", Phase.WARM, timeout=15)
    finally:
        await stack.stop()


async def test_leader_failover_during_traffic_never_overfills_a_replica() -> None:
    from envoy.config.core.v3 import health_check_pb2

    from tests.helpers import free_port
    from warmroute.config import Config
    from warmroute.envoy_process import EnvoyProcess
    from warmroute.server import ControlPlane
    from warmroute.xds.bootstrap import ads_bootstrap, to_json
    from warmroute.xds.resources import CONTROL_CLUSTER, _seconds

    api = KubeApiServer(bookmark_interval=0.2)
    await api.start()
    listen = f"127.0.0.1:{free_port()}"
    envoy_admin_addr = f"127.0.0.1:{free_port()}"

    def plane_config(identity: str) -> Config:
        return Config.model_validate(
            {
                "envoy": {"listen": listen, "admin": envoy_admin_addr},
                "control": {
                    "grpc": f"127.0.0.1:{free_port()}",
                    "admin": f"127.0.0.1:{free_port()}",
                },
                "kubernetes": {
                    "api_url": api.url,
                    "leader_election": {
                        "enabled": True, "namespace": NS, "identity": identity,
                        "lease_seconds": 1.0, "renew_seconds": 0.2,
                        "takeover_grace_seconds": 10,
                    },
                },
                "pools": [
                    pool_config(
                        metrics={
                            "path": "/metrics",
                            "interval_seconds": 0.1,
                            "reconcile_after_seconds": 1.0,
                        }
                    )
                ],
            }
        )  # fmt: skip

    cfg1, cfg2 = plane_config("p1"), plane_config("p2")
    plane1, plane2 = ControlPlane(cfg1), ControlPlane(cfg2)
    stack = KubeStack(api, cfg1, plane1, None, f"http://{listen}")  # type: ignore[arg-type]
    envoy: EnvoyProcess | None = None
    try:
        await plane1.start()
        await wait_for(lambda: plane1.processor.serving, what="p1 leads")
        await plane2.start()
        for i in range(3):
            await stack.add_pod(f"sim-{i}", service_ms=200)
        for plane in (plane1, plane2):
            pool = plane.registry.pools["main"]
            await wait_for(
                lambda p=pool: sum(r.phase is Phase.WARM for r in p.replicas.values()) == 3,
                what="3 warm replicas",
            )
        assert not plane2.processor.serving
        # Envoy sends ext_proc to whichever instance reports ready (the leader), the way a
        # Service selecting ready pods does in a cluster.
        boot = ads_bootstrap(cfg1, node_id="envoy-0")
        cluster = next(c for c in boot.static_resources.clusters if c.name == CONTROL_CLUSTER)
        lb = cluster.load_assignment.endpoints[0].lb_endpoints
        lb.add().CopyFrom(lb[0])
        lb[1].endpoint.address.socket_address.port_value = plane2.grpc_port
        for endpoint, plane in zip(lb, (plane1, plane2), strict=True):
            endpoint.endpoint.health_check_config.port_value = plane.admin.port
        hc = cluster.health_checks.add()
        hc.timeout.CopyFrom(_seconds(0.5))
        hc.interval.CopyFrom(_seconds(0.1))
        hc.unhealthy_threshold.value = 1
        hc.healthy_threshold.value = 1
        hc.http_health_check.path = "/readyz"
        assert isinstance(hc, health_check_pb2.HealthCheck)
        envoy = EnvoyProcess(to_json(boot), envoy_admin_addr)
        await envoy.start()

        statuses: list[int] = []
        stop = asyncio.Event()

        async def worker(http: aiohttp.ClientSession) -> None:
            for _ in range(200):  # bounded
                if stop.is_set():
                    return
                try:
                    statuses.append(await _post(http, stack))
                except aiohttp.ClientError:
                    statuses.append(0)

        async with client() as http:
            workers = [asyncio.create_task(worker(http)) for _ in range(6)]
            await wait_for(lambda: statuses.count(200) >= 10, timeout=20, what="traffic")
            await plane1.stop()  # the leader goes away mid-traffic
            await wait_for(lambda: plane2.processor.serving, timeout=10, what="p2 takes over")
            served = statuses.count(200)
            try:
                await wait_for(lambda: statuses.count(200) >= served + 15, timeout=30,
                               what="traffic served by the new leader")  # fmt: skip
            finally:
                stop.set()
                await asyncio.gather(*workers)
        # Ends reported to the old leader are lost; the new one reclaims those leases from
        # the replicas' own metrics: at quiescence nothing is left.
        await wait_for(lambda: plane2.registry.view().leases == 0, timeout=15, what="no lease")
        sims = list(stack.sims.values())
        print(f"\nfailover: {statuses.count(200)} ok, "
              f"{len(statuses) - statuses.count(200)} clean errors during the switch")  # fmt: skip
        assert set(statuses) <= {200, 503}, statuses  # served, or a clean retryable error
        assert all(s.stats().max_in_flight <= 1 for s in sims)
        assert sum(s.stats().received_while_full for s in sims) == 0
    finally:
        if envoy is not None:
            await envoy.stop()
        await plane2.stop()
        await plane1.stop()
        for sim in stack.sims.values():
            await sim.stop()
        await api.stop()
