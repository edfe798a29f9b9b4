"""Snapshots from config (listeners, routes, clusters) and from endpoints (EDS)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from warmroute.config import Config, PoolConfig
from warmroute.xds import resources
from warmroute.xds.resources import Endpoint
from warmroute.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    NodeOverride,
    Resource,
    Resources,
    Snapshot,
)


def config_snapshot(cfg: Config, label: str = "", retiring: Sequence[PoolConfig] = ()) -> Snapshot:
    """Everything that changes at config pace. Pool clusters take endpoints over EDS; the
    control cluster (ext_proc, access log, xDS itself) lives in the bootstrap.

    ``retiring`` pools (removed from the config, requests still in flight) keep their
    cluster but no route: a request Envoy routed to one before the route went still finds
    its cluster when warmroute grants it a slot.
    """
    clusters = [
        Resource.of(resources.pool_cluster_name(p.name), resources.pool_cluster(p))
        for p in [*cfg.pools, *retiring]
    ]
    listener = resources.listener(cfg)  # routes over RDS
    route = resources.route_configuration(cfg)
    return Snapshot(
        {
            CLUSTER: Resources.of(clusters),
            LISTENER: Resources.of([Resource.of(resources.LISTENER_NAME, listener)]),
            ROUTE: Resources.of([Resource.of(resources.ROUTE_CONFIG_NAME, route)]),
        },
        label=label,
        overrides=tuple(_node_listeners(cfg)),
    )


def _node_listeners(cfg: Config) -> Iterable[NodeOverride]:
    """The listener of nodes that listen elsewhere (``envoy.nodes``)."""
    for node in cfg.envoy.nodes:
        if node.listen is None or node.listen == cfg.envoy.listen:
            continue
        listener = resources.listener(cfg, address=node.listen)
        yield NodeOverride(
            LISTENER,
            Resources.of([Resource.of(resources.LISTENER_NAME, listener)]),
            node_id=node.id,
            cluster=node.cluster,
        )


def endpoint_resources(
    pools: Iterable[str], endpoints: Mapping[str, Iterable[Endpoint]]
) -> Resources:
    """One ClusterLoadAssignment per pool (empty for a pool without routable replicas, so
    Envoy's cluster finishes warming instead of waiting)."""
    out = []
    for pool in pools:
        eps = sorted(endpoints.get(pool, ()), key=lambda e: e.address)
        out.append(
            Resource.of(resources.pool_cluster_name(pool), resources.load_assignment(pool, eps))
        )
    return Resources.of(out)


__all__ = ["ENDPOINT", "config_snapshot", "endpoint_resources"]
