"""Envoy alone, the Kubernetes default: a STATIC cluster over the replicas, balanced by
ROUND_ROBIN (kube-proxy/Service-like) or LEAST_REQUEST (Envoy's default for Gateway API
implementations that pick it; power of two choices). No retries, no warmroute."""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from bench.lib.contenders.base import Contender
from bench.lib.util import free_port
from warmroute.envoy_process import EnvoyProcess
from warmroute.xds.bootstrap import to_json
from warmroute.xds.resources import socket_address

CLUSTER = "replicas"
POLICIES = {
    "envoy-rr": cluster_pb2.Cluster.ROUND_ROBIN,
    "envoy-lr": cluster_pb2.Cluster.LEAST_REQUEST,
}


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def static_bootstrap(
    listen: str, admin: str, addresses: list[str], policy: int, route_timeout_s: int = 600
) -> bootstrap_pb2.Bootstrap:
    """Listener -> router -> one STATIC cluster over ``addresses`` with ``policy``."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(
            cluster=CLUSTER, timeout=duration_pb2.Duration(seconds=route_timeout_s)
        ),
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="plain",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route_pb2.RouteConfiguration(
            name="plain",
            virtual_hosts=[
                route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[route])
            ],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            )
        ],
    )
    listener = listener_pb2.Listener(
        name="plain",
        address=socket_address(listen),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm)
                    )
                ]
            )
        ],
    )
    big = wrappers_pb2.UInt32Value(value=1_000_000)
    cluster = cluster_pb2.Cluster(
        name=CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        lb_policy=policy,
        connect_timeout=duration_pb2.Duration(seconds=2),
        # Envoy's default of 1024 requests must not be what limits a benchmark.
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=big, max_pending_requests=big, max_requests=big
                )
            ]
        ),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(a))
                        )
                        for a in addresses
                    ]
                )
            ],
        ),
    )
    boot = bootstrap_pb2.Bootstrap(
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[listener], clusters=[cluster]
        )
    )
    boot.node.id = "bench-plain"
    boot.node.cluster = "bench"
    boot.admin.address.CopyFrom(socket_address(admin))
    return boot


class StaticEnvoy(Contender):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.envoy: EnvoyProcess | None = None
        policy = "ROUND_ROBIN" if self.name == "envoy-rr" else "LEAST_REQUEST"
        self.description = f"Envoy, static cluster, lb_policy {policy}, no retries"

    async def _start(self, addresses: list[str]) -> None:
        self.port = free_port()
        admin = f"127.0.0.1:{free_port()}"
        boot = static_bootstrap(f"127.0.0.1:{self.port}", admin, addresses, POLICIES[self.name])
        log = str(self.logs.file(f"{self.name}-envoy"))
        self.envoy = EnvoyProcess(to_json(boot), admin, log_level="warning", log_path=log)
        await self.envoy.start()

    async def _stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
