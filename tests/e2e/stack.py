"""A real stack for end-to-end tests: simulated replicas, the control plane, a real Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.server import ControlPlane
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime
from warmroute.xds.bootstrap import ads_bootstrap, to_json

MODEL = "sim-model"

# What the fixtures of tests/e2e/conftest.py hand a test: each starts one part and has it
# stopped after the test.
StackFactory = Callable[..., Awaitable["Stack"]]
SimFactory = Callable[..., Awaitable[SimReplica]]
PlaneFactory = Callable[[Config], Awaitable[ControlPlane]]
EnvoyFactory = Callable[..., Awaitable[EnvoyProcess]]
UpFactory = Callable[..., Awaitable[asyncio.subprocess.Process]]


@dataclass
class Stack:
    config: Config
    plane: ControlPlane
    envoy: EnvoyProcess
    replicas: list[SimReplica]
    url: str
    extra: list[SimReplica] = field(default_factory=list)
    more_envoys: list[EnvoyProcess] = field(default_factory=list)

    async def wait_warm(self, count: int | None = None, timeout: float = 10.0) -> None:
        want = len(self.replicas) if count is None else count

        def warm() -> bool:
            view = self.plane.registry.view()
            # Warm and routable: the start fence lifts once Envoy's first load report came.
            held = view.fence.held
            return sum(r.phase == "warm" and r.address not in held
                       for p in view.pools for r in p.replicas) >= want  # fmt: skip

        await wait_for(warm, timeout, what=f"{want} warm, routable replicas")

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """No lease and no waiter left in warmroute."""

        def idle() -> bool:
            view = self.plane.registry.view()
            return view.leases == 0 and all(p.waiting == 0 for p in view.pools)

        await wait_for(idle, timeout, what="no lease and no waiter left")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        return metric_total(self.plane, name, **labels)

    def full_hits(self) -> int:
        return sum(r.stats().received_while_full for r in self.replicas)

    async def add_envoy(self, node_id: str, variant: str = "sotw") -> EnvoyProcess:
        """Another Envoy of the fleet (same listener port, SO_REUSEPORT; own admin)."""
        admin = f"127.0.0.1:{free_port()}"
        boot = ads_bootstrap(self.config, node_id=node_id, variant=variant)
        boot.admin.address.socket_address.port_value = int(admin.rsplit(":", 1)[1])
        envoy = EnvoyProcess(to_json(boot), admin, log_level="warning")
        await envoy.start()
        self.more_envoys.append(envoy)
        return envoy

    async def stop(self) -> None:
        """Stop every part, even when stopping one of them fails (each stop is idempotent)."""
        async with AsyncExitStack() as parts:  # unwinds last-in first: Envoys go first
            for r in self.replicas + self.extra:
                parts.push_async_callback(r.stop)
            parts.push_async_callback(self.plane.stop)
            parts.push_async_callback(self.envoy.stop)
            for envoy in self.more_envoys:
                parts.push_async_callback(envoy.stop)


async def start_stack(
    *,
    replicas: int = 2,
    slots: int = 1,
    service_ms: float = 50.0,
    load_seconds: float = 0.0,
    max_waiting: int = 1000,
    queue_timeout: float = 30.0,
    max_request_seconds: float = 600.0,
    expire_interval: float = 1.0,
    lease_grace: float = 5.0,
    probe_interval: float = 0.05,
    extra_pool: dict[str, Any] | None = None,
    variant: str = "sotw",
    node_id: str = "envoy-0",
    control_extra: dict[str, Any] | None = None,
    pool_extra: dict[str, Any] | None = None,
    routing_extra: dict[str, Any] | None = None,
) -> Stack:
    # Whatever fails half-way stops what already started; success keeps it all running.
    async with AsyncExitStack() as started:
        sims = [
            SimReplica(slots, load_seconds, ServiceTime("fixed", service_ms), seed=i, model=MODEL)
            for i in range(replicas)
        ]
        addresses = []
        for sim in sims:
            started.push_async_callback(sim.stop)
            port = await sim.start("127.0.0.1", 0)
            addresses.append(f"127.0.0.1:{port}")
        pools: list[dict[str, Any]] = [
            {
                "name": "main",
                "models": [MODEL],
                "slots": slots,
                "max_request_seconds": max_request_seconds,
                "queue": {"max_waiting": max_waiting, "timeout_seconds": queue_timeout},
                "probe": {"path": "/health", "interval_seconds": probe_interval},
                "replicas": addresses,
                **(pool_extra or {}),
            }
        ]
        if extra_pool:
            pools.append(extra_pool)
        listen = f"127.0.0.1:{free_port()}"
        cfg = Config.model_validate(
            {
                "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
                "control": {
                    "grpc": f"127.0.0.1:{free_port()}",
                    "admin": f"127.0.0.1:{free_port()}",
                    "expire_interval_seconds": expire_interval,
                    "lease_grace_seconds": lease_grace,
                    **(control_extra or {}),
                },
                "routing": routing_extra or {},
                "pools": pools,
            }
        )
        plane = ControlPlane(cfg)
        started.push_async_callback(plane.stop)
        await plane.start()
        boot = ads_bootstrap(cfg, node_id=node_id, variant=variant)
        envoy = EnvoyProcess(to_json(boot), cfg.envoy.admin, log_level="warning")
        started.push_async_callback(envoy.stop)
        await envoy.start()
        started.pop_all()
    return Stack(cfg, plane, envoy, sims, f"http://{listen}")


def metric_total(plane: ControlPlane, name: str, **labels: str) -> float:
    """Sum of the control plane's ``name`` samples whose labels include ``labels``, read
    from its Prometheus exposition as a scraper would."""
    text = plane.metrics.exposition().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def client(limit: int = 0) -> aiohttp.ClientSession:
    # No test request may wait longer than this (a hang fails the test, it does not stall).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )


@asynccontextmanager
async def background(
    work: Callable[[asyncio.Event], Coroutine[Any, Any, None]], count: int, *, swallow: bool = False
) -> AsyncIterator[None]:
    """Run ``count`` copies of ``work(stop)`` while the block runs; on leaving it (normally or
    not) set ``stop`` and wait for them all. Their errors are raised unless ``swallow``."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(work(stop)) for _ in range(count)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=swallow)
