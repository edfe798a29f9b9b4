"""Kubernetes discovery, autoscaling and draining with the real `kubernetes` client (against
the test API server) and a real Envoy carrying the traffic."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from functools import partial

import aiohttp
from envoy.config.core.v3 import health_check_pb2

from tests.e2e import envoy_admin
from tests.e2e.kube_stack import NS, KubeStack, KubeStackFactory, pool_config
from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, client
from tests.helpers import free_port, wait_for
from tests.kubeapi.server import KubeApiServer
from warmroute.config import Config
from warmroute.k8s.rbac import REQUIRED
from warmroute.k8s.scale import DELETION_COST
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.state import Phase
from warmroute.xds.bootstrap import ads_bootstrap, to_json
from warmroute.xds.resources import CONTROL_CLUSTER, _seconds

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


def _watch_errors(stack: KubeStack) -> int:
    """Errors the control plane's pod watches have reported so far."""
    discovery = stack.plane.kube_discovery
    assert discovery is not None, "the pool is discovered through Kubernetes"
    return sum(s.errors for s in discovery.stats().values())


def _all_warm(plane: ControlPlane, n: int) -> bool:
    return sum(r.phase is Phase.WARM for r in plane.registry.pools["main"].replicas.values()) == n


async def _stop_all(sims: dict[str, SimReplica]) -> None:
    """Stop every replica, even when stopping one of them fails."""
    async with AsyncExitStack() as stopping:
        for sim in sims.values():
            stopping.push_async_callback(sim.stop)


async def _started_api(cleanup: AsyncExitStack, api: KubeApiServer) -> KubeApiServer:
    """Start ``api``, stopped after the test (its stop is idempotent and safe before start)."""
    cleanup.push_async_callback(api.stop)
    await api.start()
    return api


async def test_pod_goes_ready_then_warm_then_routable_and_drains_when_deleted(
    kube_stack_factory: KubeStackFactory,
) -> None:
    stack = await kube_stack_factory()
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


async def test_burst_at_zero_scales_up_while_the_burst_waits_and_every_request_is_served(
    cleanup: AsyncExitStack, kube_stack_factory: KubeStackFactory
) -> None:
    stack_ref: list[KubeStack] = []
    created: list[asyncio.Task[object]] = []
    answered: list[float] = []  # when each response of the burst arrived (monotonic)
    at_first_patch: list[tuple[int, int]] = []  # (requests waiting, responses arrived)

    def controller(kind: str, ns: str, name: str, replicas: int) -> None:
        # The test's ReplicaSet controller: create pods up to `replicas`. It runs inside the
        # API server's handling of the patch, on the test's loop: what it reads of the
        # registry is the state at the very moment the patch arrived.
        stack = stack_ref[0]
        if not at_first_patch:
            load = stack.plane.registry.load("main")
            at_first_patch.append((load.waiting if load else 0, len(answered)))
        have = len(stack.sims)
        for i in range(have, replicas):
            created.append(
                asyncio.get_running_loop().create_task(stack.add_pod(f"sim-{i}", load_seconds=0.5))
            )

    api = await _started_api(cleanup, KubeApiServer(bookmark_interval=0.2, on_scale=controller))
    api.add_deployment(NS, "sim", 0)
    pool = pool_config(
        autoscale={"min_replicas": 0, "max_replicas": 3, "idle_seconds": 600},
        queue={"timeout_seconds": 30, "max_waiting": 100},
    )
    stack = await kube_stack_factory(api, pool=pool)
    stack_ref.append(stack)

    async def settle_created() -> None:
        await asyncio.gather(*created, return_exceptions=True)

    # Runs before the stack stops: a pod still being added when the test fails is finished
    # first, so the stack's stop sees (and stops) its replica.
    cleanup.push_async_callback(settle_created)
    assert api.scale_history == []  # no demand, no patch

    async def post_and_note(http: aiohttp.ClientSession) -> int:
        status = await _post(http, stack)
        answered.append(time.monotonic())
        return status

    async with client() as http:
        burst_at = time.monotonic()
        statuses = asyncio.gather(*(post_and_note(http) for _ in range(6)))
        await wait_for(lambda: bool(api.scale_history), what="a scale patch")
        first = api.scale_history[0]
        print(f"\nburst at zero -> scale patch to {first.replicas} after "
              f"{(first.at - burst_at) * 1e3:.0f} ms")  # fmt: skip
        # The patch was the burst's doing, made while its requests were queued and before
        # any was answered: ordering, whatever the machine's speed.
        waiting, responses = at_first_patch[0]
        assert waiting >= 1, "scaled up with nothing waiting"
        assert responses == 0
        assert first.replicas >= 1
        assert await statuses == [200] * 6
        assert first.at < min(answered)
    await asyncio.gather(*created)
    assert sum(s.stats().received_while_full for s in stack.sims.values()) == 0
    assert max(api.replicas("Deployment", NS, "sim"), 0) <= 3
    _assert_within_rbac(api)


async def test_idle_pool_scales_down_after_marking_idle_pods(
    cleanup: AsyncExitStack, kube_stack_factory: KubeStackFactory
) -> None:
    api = await _started_api(cleanup, KubeApiServer(bookmark_interval=0.2))
    api.add_deployment(NS, "sim", 2)
    pool = pool_config(autoscale={"min_replicas": 0, "max_replicas": 2, "idle_seconds": 1.0})
    stack = await kube_stack_factory(api, pool=pool)
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


async def test_watch_closed_or_expired_loses_no_event_and_makes_no_duplicate(
    kube_stack_factory: KubeStackFactory,
) -> None:
    stack = await kube_stack_factory()
    api = stack.api
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


async def test_api_errors_keep_the_last_known_state(kube_stack_factory: KubeStackFactory) -> None:
    stack = await kube_stack_factory()
    api = stack.api
    await stack.add_pod("pod-a")
    await stack.wait_phase("pod-a", Phase.WARM)
    api.fail_for(1.0, 503)
    api.close_watches()
    await wait_for(lambda: _watch_errors(stack) > 0, what="watch errors reported")
    assert stack.phase("pod-a") is Phase.WARM  # unreachable API removes nothing
    async with client() as http:
        assert await _post(http, stack) == 200
    # Unreachable altogether (connections refused) for a while: same.
    await api.set_unreachable()
    api.close_watches()
    errors = _watch_errors(stack)
    await wait_for(lambda: _watch_errors(stack) > errors, what="unreachable API reported")
    assert stack.phase("pod-a") is Phase.WARM
    await api.set_reachable()
    await stack.add_pod("pod-b")  # after the outage, events flow again
    await stack.wait_phase("pod-b", Phase.WARM, timeout=15)


async def test_leader_failover_during_traffic_never_overfills_a_replica(
    cleanup: AsyncExitStack, plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    api = await _started_api(cleanup, KubeApiServer(bookmark_interval=0.2))
    sims: dict[str, SimReplica] = {}  # stopped after both planes and Envoy (LIFO cleanup)
    cleanup.push_async_callback(_stop_all, sims)
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
    plane1 = await plane_factory(cfg1)
    await wait_for(lambda: plane1.director.serving, what="p1 leads")
    plane2 = await plane_factory(cfg2)
    stack = KubeStack(api, cfg1, plane1, None, f"http://{listen}", sims)  # type: ignore[arg-type]
    for i in range(3):
        await stack.add_pod(f"sim-{i}", service_ms=200)
    for plane in (plane1, plane2):
        await wait_for(partial(_all_warm, plane, 3), what="3 warm replicas")
    assert not plane2.director.serving
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
    await envoy_factory(to_json(boot), envoy_admin_addr)

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

    async def stop_workers(workers: list[asyncio.Task[None]]) -> None:
        stop.set()
        await asyncio.gather(*workers)

    # The workers are stopped (and awaited) before the client session closes, also when a
    # wait below fails.
    async with client() as http, AsyncExitStack() as traffic:
        workers = [asyncio.create_task(worker(http)) for _ in range(6)]
        traffic.push_async_callback(stop_workers, workers)
        await wait_for(lambda: statuses.count(200) >= 10, timeout=20, what="traffic")
        await plane1.stop()  # the leader goes away mid-traffic
        await wait_for(lambda: plane2.director.serving, timeout=10, what="p2 takes over")
        served = statuses.count(200)
        await wait_for(lambda: statuses.count(200) >= served + 15, timeout=30,
                       what="traffic served by the new leader")  # fmt: skip
    # Ends reported to the old leader are lost; the new one reclaims those leases from
    # the replicas' own metrics: at quiescence nothing is left.
    await wait_for(lambda: plane2.registry.view().leases == 0, timeout=15, what="no lease")
    print(f"\nfailover: {statuses.count(200)} ok, "
          f"{len(statuses) - statuses.count(200)} clean errors during the switch")  # fmt: skip
    assert set(statuses) <= {200, 503}, statuses  # served, or a clean retryable error
    assert all(s.stats().max_in_flight <= 1 for s in sims.values())
    assert sum(s.stats().received_while_full for s in sims.values()) == 0
