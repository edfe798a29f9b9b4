"""A Kubernetes-flavoured stack: the test API server, simulated replicas as "pods",
the control plane discovering them through the real client, and a real Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.stack import MODEL
from tests.helpers import free_port, wait_for
from tests.kubeapi.server import KubeApiServer
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.state import Phase
from warmroute.xds.bootstrap import ads_bootstrap, to_json

NS = "models"
LABELS = {"app": "sim"}
# The ``kube_stack_factory`` fixture (tests/e2e/conftest.py): start_kube_stack, stopped after.
KubeStackFactory = Callable[..., Awaitable["KubeStack"]]


@dataclass
class KubeStack:
    api: KubeApiServer
    config: Config
    plane: ControlPlane
    envoy: EnvoyProcess
    url: str
    sims: dict[str, SimReplica] = field(default_factory=dict)  # pod name -> replica

    async def add_pod(
        self, name: str, *, ready: bool = True, load_seconds: float = 0.0, service_ms: float = 20
    ) -> SimReplica:
        """Start a simulated model server and publish it as a pod."""
        sim = SimReplica(1, load_seconds, ServiceTime("fixed", service_ms), seed=0, model=MODEL)
        port = await sim.start("127.0.0.1", 0)
        self.sims[name] = sim
        self.api.add_pod(NS, name, LABELS, ip="127.0.0.1", ready=ready, container_port=port)
        return sim

    def phase(self, name: str) -> Phase | None:
        sim = self.sims.get(name)
        pool = self.plane.registry.pools["main"]
        replica = pool.replicas.get(sim.address) if sim else None
        return replica.phase if replica else None

    async def wait_phase(self, name: str, phase: Phase | None, timeout: float = 10) -> None:
        await wait_for(lambda: self.phase(name) == phase, timeout, what=f"{name} {phase}")

    def replica_count(self) -> int:
        return len(self.plane.registry.pools["main"].replicas)

    async def stop(self) -> None:
        """Stop every part, even when stopping one of them fails (each stop is idempotent)."""
        async with AsyncExitStack() as parts:  # unwinds last-in first: Envoy goes first
            parts.push_async_callback(self.api.stop)
            for sim in self.sims.values():
                parts.push_async_callback(sim.stop)
            parts.push_async_callback(self.plane.stop)
            parts.push_async_callback(self.envoy.stop)


def pool_config(**extra: Any) -> dict[str, Any]:
    return {
        "name": "main",
        "models": [MODEL],
        "slots": 1,
        "probe": {"path": "/health", "interval_seconds": 0.05},
        "queue": {"timeout_seconds": 30},
        "kubernetes": {
            "namespace": NS,
            "selector": LABELS,
            "port": "http",
            "target": {"kind": "Deployment", "name": "sim"},
        },
        **extra,
    }


async def start_kube_stack(
    api: KubeApiServer | None = None, *, pool: dict[str, Any] | None = None
) -> KubeStack:
    api = api or KubeApiServer(bookmark_interval=0.2)
    async with AsyncExitStack() as started:  # a failure half-way stops what already started
        if not api.running:
            started.push_async_callback(api.stop)
            await api.start()
        listen = f"127.0.0.1:{free_port()}"
        cfg = Config.model_validate(
            {
                "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
                "control": {
                    "grpc": f"127.0.0.1:{free_port()}",
                    "admin": f"127.0.0.1:{free_port()}",
                    "expire_interval_seconds": 0.2,
                },
                "kubernetes": {"api_url": api.url},
                "pools": [pool or pool_config()],
            }
        )
        plane = ControlPlane(cfg)
        started.push_async_callback(plane.stop)
        await plane.start()
        envoy = EnvoyProcess(to_json(ads_bootstrap(cfg, node_id="envoy-0")), cfg.envoy.admin)
        started.push_async_callback(envoy.stop)
        await envoy.start()
        started.pop_all()
    return KubeStack(api, cfg, plane, envoy, f"http://{listen}")


async def gather_statuses(coros: list[Any]) -> list[int]:
    return list(await asyncio.gather(*coros))
