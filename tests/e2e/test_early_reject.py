"""Early honest 503 through real Envoy (``queue.reject_when_unmeetable``, issue 12).

One replica with one slot, at its max; requests of 3 s. With one request running and one
queued behind it, a third would wait ~6 s against a 4 s queue timeout and no replica can
be added: it is answered 503 at once, with ``Retry-After`` the predicted wait rounded up,
and never queues. The second (predicted ~3 s) queues and is served.
"""

from __future__ import annotations

import asyncio

from tests.e2e.stack import MODEL, EnvoyFactory, PlaneFactory, client
from tests.helpers import free_port, free_ports, wait_for
from warmroute.config import Config
from warmroute.state import Phase
from warmroute.xds.bootstrap import ads_bootstrap, to_json


async def test_a_request_that_could_only_time_out_is_refused_at_once(
    plane_factory: PlaneFactory, envoy_factory: EnvoyFactory
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    cfg = Config.model_validate(
        {
            "envoy": {"listen": listen, "admin": f"127.0.0.1:{free_port()}"},
            "control": {"grpc": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
            "pools": [{
                "name": "main", "models": [MODEL],
                "queue": {"timeout_seconds": 4, "reject_when_unmeetable": True},
                "probe": {"interval_seconds": 0.05},
                "simulate": {
                    "base_port": free_ports(1), "load_seconds": 0,
                    "distribution": "fixed", "median_ms": 50,
                },
                "autoscale": {"min_replicas": 1, "max_replicas": 1, "idle_seconds": 600},
            }],
        }
    )  # fmt: skip
    plane = await plane_factory(cfg)
    await envoy_factory(to_json(ads_bootstrap(cfg)), cfg.envoy.admin)
    pool = plane.registry.pools["main"]
    await wait_for(
        lambda: any(r.phase is Phase.WARM for r in pool.replicas.values()),
        timeout=30,
        what="the replica warm",
    )
    headers = {"x-model": MODEL, "x-sim-service-ms": "3000"}
    async with client() as http:

        async def post() -> tuple[int, dict[str, str], bytes]:
            async with http.post(f"http://{listen}/v1/x", headers=headers) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

        assert (await post())[0] == 200  # learns a 3 s service time
        running = asyncio.create_task(post())
        await wait_for(lambda: plane.registry.view().leases == 1, what="the slot busy")
        queued = asyncio.create_task(post())  # predicted ~3 s <= 4 s: it queues
        await wait_for(lambda: len(pool.queue) == 1, what="one request queued")
        status, got, body = await post()  # predicted ~6 s > 4 s, and no replica can come
        assert status == 503, body
        assert b"queue_timeout" in body
        assert 5 <= int(got["retry-after"]) <= 7, got
        assert len(pool.queue) == 1  # it never queued
        assert (await running)[0] == 200
        assert (await queued)[0] == 200
    assert pool.counters.waits_timed_out == 0
