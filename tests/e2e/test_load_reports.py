"""Envoys' load reports reconcile the ledger while it runs (real Envoy, real LRS).

A second Envoy with no ext_proc at all (a hand-made config, a stale sidecar, a gateway
with ``failure_mode_allow``) sends a long request straight to one replica. Nothing leased
it; only that Envoy's load report tells. warmroute must count it as a busy slot within a
report interval or two, show it in /state and metrics, route its own requests elsewhere
meanwhile, and give the slot back when the request ends.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from google.protobuf import json_format

from tests.e2e.stack import MODEL, EnvoyFactory, StackFactory, client, metric_total
from tests.helpers import free_port, wait_for
from warmroute.config import Config
from warmroute.xds import resources


def _rogue_envoy(listen: int, admin: int, target: str, cfg: Config) -> str:
    """An Envoy that proxies everything to ``target`` without asking anyone, and reports
    its load to warmroute (as every bootstrap warmroute renders does)."""
    control = json_format.MessageToDict(resources.control_cluster(cfg))
    host, _, port = target.rpartition(":")
    doc = {
        "node": {"id": "rogue", "cluster": "elsewhere"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "cluster_manager": {
            "load_stats_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": resources.CONTROL_CLUSTER}}],
            }
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "rogue",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "rogue",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {
                                                                "cluster": "direct",
                                                                "timeout": "60s",
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                control,
                {
                    "name": "direct",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "direct",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": host,
                                                    "port_value": int(port),
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
        },
    }
    return json.dumps(doc)


async def test_traffic_envoy_sent_without_a_lease_counts_as_busy_until_it_ends(
    stack_factory: StackFactory, envoy_factory: EnvoyFactory
) -> None:
    stack = await stack_factory(replicas=2, service_ms=30)
    await stack.wait_warm()
    plane = stack.plane
    # Running, past the start's fence (which would count what runs then as old requests).
    await wait_for(lambda: not plane.registry.inflight.fencing, what="the start fence lifted")
    victim, other = stack.replicas
    listen, admin = free_port(), free_port()
    await envoy_factory(
        _rogue_envoy(listen, admin, victim.address, stack.config), f"127.0.0.1:{admin}"
    )

    def unleased(address: str) -> int:
        replica = plane.registry.pools["main"].replicas[address]
        return replica.unleased

    async with client() as http:
        rogue = asyncio.create_task(
            http.post(
                f"http://127.0.0.1:{listen}/v1/completions",
                headers={"x-model": MODEL, "x-sim-service-ms": "6000"},
                json={},
            )
        )
        await wait_for(lambda: victim.stats().in_flight == 1, what="the unleased request")
        # Two report intervals (0.5 s each) and a margin; Envoy connects its LRS stream
        # when it starts, so no 5 s retry is involved here.
        await wait_for(lambda: unleased(victim.address) == 1, timeout=10, what="it counted")
        assert metric_total(plane, "warmroute_lease_discrepancies_total", kind="unleased") == 1
        view = {r.address: r for r in plane.registry.view().pools[0].replicas}
        assert view[victim.address].envoy_in_progress == 1
        assert view[victim.address].free == 0
        # Our own requests meanwhile: every one goes to the other replica.
        statuses = await asyncio.gather(*(_post(http, stack.url) for _ in range(12)))
        assert statuses == [200] * 12
        assert victim.stats().received_while_full == 0
        assert other.stats().completed >= 12
        response = await rogue
        assert response.status == 200
        response.release()
        await wait_for(lambda: unleased(victim.address) == 0, timeout=10, what="slot back")
    await stack.wait_idle()
    assert stack.full_hits() == 0


async def _post(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url + "/v1/completions", headers={"x-model": MODEL}, json={}) as r:
        await r.read()
        return r.status
