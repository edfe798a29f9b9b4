"""Predictive scaling through real Envoy and simulated replica processes (issue 12).

The pool learns its service time from the requests Envoy reports finished and its cold
start from the first replica's load; a burst the warm replica clears well within a cold
start starts nothing, a burst it cannot clear in time starts replicas. The margins are
wide (the predicted wait and the cold start differ several times over), so a loaded
machine does not flip the decision.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, client
from tests.helpers import free_port, free_ports, wait_for
from warmroute.config import Config
from warmroute.server import ControlPlane
from warmroute.state import Phase
from warmroute.xds.bootstrap import ads_bootstrap, to_json


def config(listen: str, load_seconds: float) -> Config:
    return Config.model_validate(
        {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "pools": [{
                "name": "main", "models": [MODEL],
                "probe": {"interval_seconds": 0.05},
                "simulate": {
                    "base_port": free_ports(3), "load_seconds": load_seconds,
                    "distribution": "fixed", "median_ms": 50,
                },
                "autoscale": {
                    "min_replicas": 1, "max_replicas": 3, "idle_seconds": 600,
                    "mode": "predictive", "cold_start_seconds": load_seconds,
                },
            }],
        }
    )  # fmt: skip


async def burst(listen: str, service_ms: float, warmup: int, size: int) -> list[int]:
    """``warmup`` requests one after another (the service time to learn), then ``size``
    at once; every status."""
    headers = {"x-model": MODEL, "x-sim-service-ms": str(service_ms)}
    async with client() as http:

        async def post() -> int:
            async with http.post(f"http://{listen}/v1/x", headers=headers) as r:
                await r.read()
                return r.status

        first = [await post() for _ in range(warmup)]
        return first + list(await asyncio.gather(*(post() for _ in range(size))))


async def started(
    plane_factory: PlaneFactory, envoy_factory: EnvoyFactory, load_seconds: float
) -> tuple[Config, ControlPlane, Any]:
    listen = f"127.0.0.1:{free_port()}"
    cfg = config(listen, load_seconds)
    plane = await plane_factory(cfg)
    await envoy_factory(to_json(ads_bootstrap(cfg)), cfg.envoy.admin)
    pool = plane.registry.pools["main"]
    await wait_for(
        lambda: any(r.phase is Phase.WARM for r in pool.replicas.values()),
        timeout=30,
        what="the first replica warm",
    )
    return cfg, plane, pool


async def test_a_burst_the_warm_replica_clears_starts_nothing(
    plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    cfg, plane, pool = await started(plane_factory, envoy_factory, load_seconds=3.0)
    listen = cfg.envoy.listen
    # 6 at once on 1 slot of ~50 ms: the last starts after ~0.3 s; a cold start is >= 3 s.
    statuses = await burst(listen, 50, warmup=3, size=6)
    assert statuses == [200] * 9
    last = pool.forecast.last
    assert last is not None and last.reason.startswith("wait warm"), last
    assert await plane.local_scaler.get_replicas(cfg.pools[0]) == 1

    def learned() -> bool:
        # A request's end reaches warmroute (access log) just after its client has the
        # answer: wait for the last one, do not race it.
        view = plane.registry.view().pools[0].forecast
        return view is not None and view.service_samples >= 9 and view.cold_starts >= 1

    await wait_for(learned, what="every request's service time and the cold start learned")


async def test_a_burst_it_cannot_clear_in_time_starts_replicas(
    plane_factory: PlaneFactory, envoy_factory: EnvoyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, plane, _pool = await started(plane_factory, envoy_factory, load_seconds=0.5)
    # 8 at once on 1 slot of 800 ms: the last would start after ~5.6 s; a cold start is
    # ~0.5 s plus process start-up.
    with caplog.at_level(logging.INFO, logger="warmroute.autoscale.controller"):
        statuses = await burst(cfg.envoy.listen, 800, warmup=2, size=8)
    assert statuses == [200] * 10
    assert await plane.local_scaler.get_replicas(cfg.pools[0]) > 1
    scaled = [r.getMessage() for r in caplog.records if "scaled 1 ->" in r.getMessage()]
    assert scaled and "start cold" in scaled[0], scaled
