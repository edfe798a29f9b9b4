"""Scale from zero on one machine: the local scaler starts simulated replica processes."""

from __future__ import annotations

import asyncio
import time

from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, client
from tests.helpers import free_port, free_ports, wait_for
from warmroute.config import Config
from warmroute.xds.bootstrap import ads_bootstrap, to_json


async def test_burst_at_zero_starts_replicas_and_every_request_is_served(
    plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    cfg = Config.model_validate(
        {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "pools": [
                {
                    "name": "main",
                    "models": [MODEL],
                    "probe": {"interval_seconds": 0.05},
                    "simulate": {
                        "base_port": free_ports(2), "load_seconds": 0.5,
                        "distribution": "fixed", "median_ms": 50,
                    },
                    "autoscale": {"min_replicas": 0, "max_replicas": 2, "idle_seconds": 600},
                }
            ],
        }
    )  # fmt: skip
    plane = await plane_factory(cfg)
    envoy = await envoy_factory(to_json(ads_bootstrap(cfg)), cfg.envoy.admin)
    assert await plane.local_scaler.get_replicas(cfg.pools[0]) == 0
    async with client() as http:

        async def post() -> int:
            async with http.post(f"http://{listen}/v1/x", headers={"x-model": MODEL}) as r:
                await r.read()
                return r.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(post() for _ in range(4)))
        first_served = time.monotonic() - started
    print(f"\nscale from zero: 4 requests served {first_served:.2f}s after the burst")
    assert statuses == [200] * 4
    assert await plane.local_scaler.get_replicas(cfg.pools[0]) == 2
    assert plane.metrics.scale_events.labels("main", "up")._value.get() >= 1
    await wait_for(lambda: plane.registry.view().leases == 0, what="no lease left")
    # Stopping is under test here: it must reap the replica processes the scaler started.
    await envoy.stop()
    await plane.stop()
    assert await plane.local_scaler.get_replicas(cfg.pools[0]) == 0  # processes reaped
